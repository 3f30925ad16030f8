"""HTTP/2 limits of pytusd's own server that need an app of their own (in-process, pytusd.server.Server in a
thread): a client that opens and resets streams without end (rapid reset, CVE-2023-44487) never has more than
MAX_STREAMS requests running, and is disconnected once it keeps going past REFUSED_LIMIT refused streams."""

from __future__ import annotations

import asyncio
import threading

import h2.events

from pytusd.server.h2 import MAX_STREAMS, REFUSED_LIMIT

from tests.conftest import serve_in_thread
from tests.e2e.h2client import H2Client


class SlowApp:
    """Answers after a second whatever the client does, counting the requests running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.calls = 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (message := await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(1.0)
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        finally:
            with self.lock:
                self.running -= 1


def test_rapid_reset_runs_at_most_max_streams_requests_and_then_disconnects():
    app = SlowApp()
    with serve_in_thread(app, enable_h2c=True) as port:
        client = H2Client(port)
        closed = False
        goaway = None
        try:
            for _ in range(MAX_STREAMS + REFUSED_LIMIT + 50):
                stream = client.request("GET", "/")
                client.h2.reset_stream(stream)
                client.flush()
            while True:  # read what the server said until it closes the connection
                data = client.sock.recv(65536)
                if not data:
                    closed = True
                    break
                for event in client.h2.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event.error_code
        except (ConnectionError, OSError):
            closed = True
        finally:
            client.close()
    assert closed
    assert app.most <= MAX_STREAMS, app.most
    assert app.calls <= MAX_STREAMS + 1, app.calls  # the rest were refused, not run
    assert goaway in (None, 11), goaway  # ENHANCE_YOUR_CALM, when it arrives before the reset of the close
