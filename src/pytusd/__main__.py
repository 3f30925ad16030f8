from .server.cli import run

run()
