"""tusd's flags on pytusd's command line: the ones pytusd takes with tusd's meaning and default, and the Go-only
ones, which are refused with what to use instead."""

from __future__ import annotations

import re

import pytest

from pytusd.server.cli.flags import GO_ONLY_FLAGS, build_parser, normalise_argv
from pytusd.server.cli.main import main

# The names as tusd's cmd/tusd/cli/flags.go declares them.
TUSD_GO_ONLY = ("expose-pprof", "pprof-path", "pprof-block-profile-rate", "pprof-mutex-profile-rate", "hooks-plugin")


def parse(*argv: str):
    parser = build_parser()
    return parser.parse_args(normalise_argv(list(argv), parser))


@pytest.mark.parametrize("flag", [
    "-expose-pprof", "--expose-pprof", "-expose-pprof=true", "-pprof-path=/debug/pprof/", "-pprof-block-profile-rate",
    "-pprof-mutex-profile-rate=1", "-hooks-plugin", "--hooks-plugin=./hooks.so",
])
def test_go_only_flags_are_refused_with_what_to_use_instead(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([flag, "--upload-dir", "/nonexistent"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("pytusd: error:")]
    name = flag.lstrip("-").split("=")[0]
    assert f"{flag.split('=')[0]} is a tusd (Go) flag pytusd does not take" in line
    if name == "hooks-plugin":
        assert "--hooks-python module:object" in line
    else:
        assert "py-spy" in line and "tracemalloc" in line
    assert "did you mean" not in err


def test_the_go_only_table_names_tusds_flags():
    assert set(GO_ONLY_FLAGS) == set(TUSD_GO_ONLY)
    assert "hooks-python" in {action.dest.replace("_", "-") for action in build_parser()._actions}


def serve_with(monkeypatch, tmp_path, *argv: str) -> dict:
    """Run ``pytusd ARGV`` up to the point where it would serve: what it would serve with."""
    import pytusd.server

    seen: dict = {}

    def fake_serve(app, options, *args, **kwargs):
        seen.update(app=app, options=options, args=args, kwargs=kwargs)

    monkeypatch.setattr(pytusd.server, "serve", fake_serve)
    assert main(["--upload-dir", str(tmp_path / "data"), "--malloc-tuning=false", *argv]) == 0
    return seen


def test_enable_h2c_reaches_the_server_options(monkeypatch, tmp_path):
    assert serve_with(monkeypatch, tmp_path)["options"].enable_h2c is False
    assert serve_with(monkeypatch, tmp_path, "-enable-h2c")["options"].enable_h2c is True
    assert serve_with(monkeypatch, tmp_path, "-enable-h2c=false")["options"].enable_h2c is False
    assert "HTTP/2" in build_parser().format_help()


def test_enable_h2c_and_tls_are_refused_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-enable-h2c", "-tls-certificate", "c.pem", "-tls-key", "k.pem", "--upload-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--enable-h2c is HTTP/2 without encryption" in capsys.readouterr().err


# -- start-up lines: tusd's "You can now upload files to" and -show-startup-logs ---------------------------------


def test_the_upload_line_is_tusds():
    from pytusd.server.cli.main import upload_line

    assert upload_line("/files/")([("127.0.0.1", 8080)]) == "You can now upload files to: http://127.0.0.1:8080/files/"
    assert upload_line("/files/", tls=True)([("::1", 8443, 0, 0)]) == (
        "You can now upload files to: https://[::1]:8443/files/")
    # The base path as given (tusd prints its flag), the real port of the socket, not the one asked for.
    assert upload_line("uploads", port=0)([("0.0.0.0", 41234)]) == (
        "You can now upload files to: http://0.0.0.0:41234uploads")
    assert upload_line("/files/", host="10.0.0.1", port=9000)([]) == (
        "You can now upload files to: http://10.0.0.1:9000/files/")
    assert upload_line("/files/", unix_socket="/run/tus.sock")([]) == ""  # tusd prints none for a UNIX socket


def start_and_stop(tmp_path, *flags: str, until: str = "") -> str:
    """Run the real command on a free port until it answers (and has logged ``until``), stop it with SIGTERM,
    return what it logged (the port written PORT)."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path / f"pytusd-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pytusd", "--host", "127.0.0.1", "--port", str(port),
                                 "--upload-dir", str(tmp_path / "data"), *flags], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                try:
                    httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                    if until in log_path.read_text():
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            time.sleep(0.5)  # lines that would come next (none should)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    return log_path.read_text().replace(str(port), "PORT")


@pytest.mark.e2e
def test_startup_lines_end_with_tusds_upload_line(tmp_path):
    lines = start_and_stop(tmp_path, until="You can now").splitlines()
    banner = next(i for i, line in enumerate(lines) if "serving uploads at" in line)
    # on stdout as tusd prints it: Go's log timestamp, then the line (pytusd.server.lifecycle.tusd_line)
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} You can now upload files to: http://127\.0\.0\.1:PORT/files/",
                        lines[banner + 1]), lines[banner + 1]


@pytest.mark.e2e
def test_show_startup_logs_false_hides_them_but_not_the_shutdown(tmp_path):
    log = start_and_stop(tmp_path, "-show-startup-logs=false")
    assert "serving uploads at" not in log and "You can now upload files to" not in log, log
    assert "shutting down (SIGTERM)" in log and "Received interrupt signal. Shutting down pytusd..." in log, log
    assert "Shutdown completed. Goodbye!" in log, log


@pytest.mark.e2e
def test_under_workers_the_upload_line_comes_once(tmp_path):
    log = start_and_stop(tmp_path, "--workers", "2", until="You can now")
    assert log.count("You can now upload files to: http://127.0.0.1:PORT/files/") == 1, log
    assert "2 workers ready" in log
    log = start_and_stop(tmp_path, "--workers", "2", "-show-startup-logs=false")
    assert "workers ready" not in log and "serving uploads" not in log and "You can now" not in log, log


# Every flag of tusd's command (cmd/tusd/cli/flags.go, tusd 2.x), by name.
TUSD_FLAGS = (
    "host port unix-sock base-path behind-proxy enable-h2c tls-certificate tls-key tls-mode "
    "enable-experimental-protocol disable-download disable-termination disable-concatenation max-size disable-cors "
    "cors-allow-origin cors-allow-credentials cors-allow-methods cors-allow-headers cors-max-age "
    "cors-expose-headers upload-dir filelock-holder-poll-interval filelock-acquirer-poll-interval dir-perms "
    "file-perms s3-bucket s3-object-prefix s3-endpoint s3-part-size s3-min-part-size s3-max-buffered-parts "
    "s3-disable-content-hashes s3-disable-ssl s3-concurrent-part-uploads s3-transfer-acceleration s3-log-api-calls "
    "gcs-bucket gcs-object-prefix gcs-endpoint azure-storage azure-container-access-type azure-blob-access-tier "
    "azure-object-prefix azure-endpoint hooks-enabled-events progress-hooks-interval hooks-dir hooks-http "
    "hooks-http-forward-headers hooks-http-retry hooks-http-backoff hooks-http-timeout hooks-http-size-limit "
    "hooks-http-skip-verify hooks-grpc hooks-grpc-retry hooks-grpc-backoff hooks-grpc-secure "
    "hooks-grpc-server-tls-certificate hooks-grpc-client-tls-certificate hooks-grpc-client-tls-key "
    "hooks-grpc-forward-headers hooks-plugin expose-metrics metrics-path expose-pprof pprof-path "
    "pprof-block-profile-rate pprof-mutex-profile-rate show-greeting version verbose show-startup-logs log-format "
    "network-timeout shutdown-timeout acquire-lock-timeout request-completion-timeout "
).split()


def test_every_tusd_flag_is_taken_or_refused_with_what_to_use_instead():
    from pytusd.server.cli.flags import FLAGS

    taken = {flag.name for flag in FLAGS} | {"version"}
    assert [name for name in TUSD_FLAGS if name not in taken and name not in GO_ONLY_FLAGS] == []
    assert not taken & set(GO_ONLY_FLAGS)
