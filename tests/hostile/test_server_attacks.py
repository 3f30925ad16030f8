"""Hostile clients against pytusd's own HTTP server (pytusd.server): each test here is an attack that works on the
code it was written against, and passes once the server defends itself (as Go's net/http, tusd's server, does)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import hpack
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame

from pytusd.server import ServeOptions, Server


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[tuple[Server, int]]:
    """pytusd's server in a thread (as tests.conftest.serve_in_thread), yielding the Server too, so a test can look
    at what its connections buffer."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Server(app, ServeOptions(host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield server, port
    finally:
        server.request_stop()
        thread.join(30)


def buffered(server: Server) -> int:
    """Bytes the server's connections hold in their transports' write buffers."""
    assert server.state is not None
    return sum(c.transport.get_write_buffer_size() for c in list(server.state.connections)
               if c.transport is not None and not c.transport.is_closing())


def small_recv_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


BIG = b"x" * (256 * 1024)


async def big_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Any ASGI app answering in one message (TusApp does so for every non-download response)."""
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(BIG)).encode())]})
    await send({"type": "http.response.body", "body": BIG})


def test_h1_pipelining_client_that_never_reads_is_not_buffered_without_bound():
    """A client pipelines small requests and never reads. Go's server blocks in the handler's write, so it stops
    reading requests; pytusd answers every request into the transport's buffer (Cycle.send awaits drain only with
    more_body), and response_done resumes reading: the buffer grows by one response per request, without bound."""
    with serve(big_answer) as (server, port):
        sock = small_recv_socket(port)
        sock.setblocking(False)
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        with contextlib.suppress(BlockingIOError):
            sock.send(request * 400)  # 11 KB of requests; 100 MB of answers
        time.sleep(3)
        try:
            assert buffered(server) < 8 * 1024 * 1024
        finally:
            sock.close()


def h2_client(port: int, window: int | None = None) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = small_recv_socket(port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    if window is not None:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    sock.sendall(conn.data_to_send())
    return sock, conn


def raw_frames(sock: socket.socket) -> Iterator[Any]:
    """The frames the server sends, parsed without a client state machine, until EOF or a read timeout."""
    buf = b""
    with contextlib.suppress(OSError):
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(buf[9:9 + length]))
                buf = buf[9 + length:]
                yield frame


def test_h2_ping_flood_from_a_client_that_never_reads_is_cut_off():
    """PING frames from a client that never reads: every ACK is queued in the transport (H2Connection never stops
    reading while writing is paused), without bound. Go's server closes the connection once 10000 control frames
    wait to be written (http2 maxQueuedControlFrames)."""
    with serve(big_answer, enable_h2c=True) as (server, port):
        sock, _ = h2_client(port)
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        blob = ping.serialize() * 20000
        sock.settimeout(0.5)
        sent = 0
        deadline = time.monotonic() + 8
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                sock.sendall(blob)
                sent += len(blob)
        held, last = buffered(server), -1
        settle = time.monotonic() + 20
        while held != last and time.monotonic() < settle:  # until the server took in all that was sent
            time.sleep(1)
            held, last = buffered(server), held
        sock.close()
        assert held < 1024 * 1024, f"{held} bytes of PING ACKs queued for a client that sent {sent} bytes"


def test_h2_rapid_reset_does_not_run_more_handlers_than_max_concurrent_streams():
    """CVE-2023-44487 (rapid reset): HEADERS then RST_STREAM, again and again. The reset stream leaves h2's count of
    open streams at once, but its app task goes on (H2Connection._request starts one per stream; StreamReset only
    marks it gone), so MAX_CONCURRENT_STREAMS bounds nothing: here 2000 handlers run at once from one connection.
    Go's server (x/net/http2 since the CVE fix, Go 1.21.3) runs at most MaxConcurrentStreams handlers per
    connection, reset or not, queues the next ones and sends GOAWAY ENHANCE_YOUR_CALM when the queue grows."""
    running = 0
    most = 0

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal running, most
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        running += 1
        most = max(most, running)
        try:
            await asyncio.sleep(3)  # a hook, a lock, a slow store: work that does not end with the stream
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            pass
        finally:
            running -= 1

    with serve(slow, enable_h2c=True) as (server, port):
        sock, conn = h2_client(port)
        sock.settimeout(5)
        headers = [(b":method", b"POST"), (b":path", b"/files/"), (b":scheme", b"http"), (b":authority", b"x")]
        with contextlib.suppress(OSError):
            for batch in range(20):
                for _ in range(100):
                    stream_id = conn.get_next_available_stream_id()
                    conn.send_headers(stream_id, headers, end_stream=True)
                    conn.reset_stream(stream_id)
                sock.sendall(conn.data_to_send())
        time.sleep(2)
        sock.close()
        assert most <= 100, f"{most} app handlers ran at once on one connection (MAX_CONCURRENT_STREAMS is 100)"


def _upload(port: int, size: int) -> str:
    """An upload of ``size`` bytes on the real server, in one POST; its path."""
    import httpx

    response = httpx.post(f"http://127.0.0.1:{port}/files/", content=b"z" * size, timeout=60, headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Content-Type": "application/offset+octet-stream"})
    assert response.status_code == 201 and response.headers["upload-offset"] == str(size), response.text
    return "/files/" + response.headers["location"].rsplit("/", 1)[1]


def test_h2_download_to_a_zero_window_is_not_held_forever(pytusd_factory):
    """A client with SETTINGS_INITIAL_WINDOW_SIZE 0 asks for downloads and never opens its window: each stream's
    app task waits in Stream._send_data for a window that never comes, and the connection's idle timer is off while
    streams are open, so nothing ever ends them (seen: still open 10 s into a --network-timeout of 2 s). tusd sets a
    write deadline of 2 x NetworkTimeout on every request (handler/unrouted_handler.go, ServeHTTP, through
    http.ResponseController, which works on HTTP/2 too): the stream is reset then."""
    server = pytusd_factory("-enable-h2c", "--network-timeout", "1s")
    path = _upload(server.port, 100_000)
    sock, conn = h2_client(server.port, window=0)
    for _ in range(20):
        conn.send_headers(conn.get_next_available_stream_id(), [
            (b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"), (b":authority", b"x"),
            (b"tus-resumable", b"1.0.0")], end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.settimeout(0.5)
    ended: set[int] = set()
    deadline = time.monotonic() + 8  # 2 x --network-timeout, and then some
    closed = False
    while time.monotonic() < deadline and len(ended) < 20 and not closed:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            closed = True
            break
        for event in conn.receive_data(data):
            if isinstance(event, (h2.events.StreamReset, h2.events.StreamEnded)):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                closed = True
        with contextlib.suppress(OSError):
            sock.sendall(conn.data_to_send())
    sock.close()
    assert closed or len(ended) == 20, f"{20 - len(ended)} streams still held 8 s into a 1 s network timeout"


def test_h1_download_to_a_client_that_never_reads_is_not_held_forever(pytusd_factory):
    """The same on HTTP/1.1: a GET of a 32 MB upload by a client that never reads. Cycle.send awaits drain()
    without a deadline, so the request never ends and the connection is held for good. tusd's 2 x NetworkTimeout
    write deadline ends it."""
    server = pytusd_factory("--network-timeout", "1s")
    path = _upload(server.port, 32 * 1024 * 1024)
    sock = small_recv_socket(server.port)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode())
    time.sleep(8)  # 2 x --network-timeout, and then some
    # Now read: a server that gave up has closed the connection (reset it, or ends the stream early).
    sock.settimeout(5)
    got = 0
    with contextlib.suppress(OSError):
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
    sock.close()
    assert got < 32 * 1024 * 1024, "the whole download still came 8 s into a 1 s network timeout"


def test_h2_upload_open_at_sigterm_gets_its_503(pytusd_factory):
    """SIGTERM while an HTTP/2 upload is open: the app stores what came and answers 503 ERR_SERVER_SHUTDOWN (it
    does so on HTTP/1.1), but the client only ever sees GOAWAY and EOF. H2Connection.shutdown calls
    h2's close_connection(), which moves h2's connection state machine to CLOSED: every later send_headers raises
    ProtocolError, which Stream.send takes for a vanished client, so the answer of every open stream is dropped.
    Go's server sends GOAWAY and lets the streams below last_stream_id finish, their responses included."""
    import signal

    server = pytusd_factory("-enable-h2c", "--shutdown-timeout", "5s")
    import httpx

    created = httpx.post(f"http://127.0.0.1:{server.port}/files/",
                         headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000000"})
    path = "/files/" + created.headers["location"].rsplit("/", 1)[1]
    sock, conn = h2_client(server.port)
    conn.send_headers(1, [
        (b":method", b"PATCH"), (b":path", path.encode()), (b":scheme", b"http"), (b":authority", b"x"),
        (b"tus-resumable", b"1.0.0"), (b"upload-offset", b"0"),
        (b"content-type", b"application/offset+octet-stream"), (b"content-length", b"1000000")])
    conn.send_data(1, b"b" * 16000)
    sock.sendall(conn.data_to_send())
    time.sleep(1)
    server.signal(signal.SIGTERM)
    sock.settimeout(8)
    status = None
    frames = raw_frames(sock)  # h2's client state machine, too, refuses HEADERS after a GOAWAY: read frames raw
    decoder = hpack.Decoder()
    for frame in frames:
        if isinstance(frame, HeadersFrame) and frame.stream_id == 1:
            status = dict(decoder.decode(frame.data, raw=True)).get(b":status")
            break
    sock.close()
    assert server.wait(10) == 0
    assert status == b"503", f"the open HTTP/2 upload got {status!r} at shutdown, not its 503"


def _exchange(port: int, raw: bytes, wait: float = 2.0) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(wait)
    sock.sendall(raw)
    out = b""
    with contextlib.suppress(OSError):
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    sock.close()
    return out


def test_h1_unsupported_transfer_coding_before_chunked_is_refused(pytusd_factory):
    """``Transfer-Encoding: gzip, chunked``: H1Connection.on_header looks only at the last coding, so the body is
    unchunked and handed to the app still gzip-coded, and stored as the upload's bytes (201, Upload-Offset counting
    the coded bytes). Go's server answers 501 "unsupported transfer encoding" (RFC 9112 section 6.1: a server that
    receives a transfer coding it does not understand should answer 501 and close)."""
    server = pytusd_factory()
    answer = _exchange(server.port, (
        b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n"
        b"Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"))
    assert answer.startswith((b"HTTP/1.1 501", b"HTTP/1.1 400")), answer[:200]


def test_an_app_that_returns_on_lifespan_does_not_hang_startup():
    """An ASGI app that just returns for scopes it does not handle (``if scope["type"] != "http": return``, a
    common idiom): Lifespan._run returns without an answer, and Lifespan.startup waits for one forever, so the
    server never listens. uvicorn (which pytusd's embedding docs name) takes a returning app as one without
    lifespan support and serves on."""

    async def plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    server = Server(plain, ServeOptions(host="127.0.0.1", port=0))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    started = server.started
    if started:
        server.request_stop()
        thread.join(10)
    assert started, "the server did not start within 5 s"


def test_shutdown_timeout_with_stalled_streams_logs_no_tracebacks_and_exits_in_time(pytusd_factory):
    """Streams stalled on a zero window at SIGTERM: after --shutdown-timeout Server._shutdown aborts the transports
    and cancels every task at once, and run_app logs each CancelledError as "the app failed" with a traceback
    (level ERROR), one per stream, though nothing failed but the client. (The exit itself is in time: status 0,
    1.08 s after SIGTERM with --shutdown-timeout 1s.)"""
    import signal

    server = pytusd_factory("-enable-h2c", "--shutdown-timeout", "1s")
    path = _upload(server.port, 100_000)
    sock, conn = h2_client(server.port, window=0)
    for _ in range(5):
        conn.send_headers(conn.get_next_available_stream_id(), [
            (b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"), (b":authority", b"x"),
            (b"tus-resumable", b"1.0.0")], end_stream=True)
    sock.sendall(conn.data_to_send())
    time.sleep(1)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    server.wait(15)
    took = time.monotonic() - started
    sock.close()
    log = server.log()
    assert "Traceback" not in log and "CancelledError" not in log, log[-1500:]
    assert took < 1.0 + 0.5, f"exit {took:.1f} s after SIGTERM with --shutdown-timeout 1s"


def test_a_head_trickled_byte_by_byte_costs_about_its_size():
    """A request head sent one byte per segment must cost about its size: kept as one bytes object per read (about
    48 bytes of memory for one byte of head under pymalloc), a head near the 1 MiB limit would cost tens of MB for
    as long as the network timeout allows. Go reads a head into one bufio buffer, as H1Connection.head_buf is."""
    with serve(big_answer) as (server, port):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET / HTTP/1.1\r\nX: ")
        for _ in range(3000):
            sock.send(b"a")
            time.sleep(0.0002)
        time.sleep(0.5)
        import sys

        (conn,) = list(server.state.connections)
        size = sys.getsizeof(conn.head_buf)
        held = conn.head_size
        sock.close()
        assert size < 4 * held + 4096, f"{size} bytes of memory hold {held} bytes of request head"


def test_h2_one_stream_over_the_limit_refuses_that_stream_not_the_connection():
    """A client opens 101 streams at once (before the server's SETTINGS reached it, the limit is not known yet; RFC
    9113 section 5.1.2 makes an excess stream a *stream* error, PROTOCOL_ERROR or REFUSED_STREAM). h2 raises
    TooManyStreamsError, H2Connection.data_received takes it for a connection error: GOAWAY PROTOCOL_ERROR, and the
    100 streams within the limit (uploads, on a real server) are lost with it. Go's server answers the excess stream
    with RST_STREAM (REFUSED_STREAM while its SETTINGS are unacknowledged) and serves the others."""
    with serve(big_answer, enable_h2c=True) as (server, port):
        sock = socket.create_connection(("127.0.0.1", port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        for _ in range(101):
            conn.send_headers(conn.get_next_available_stream_id(), [
                (b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"x")],
                end_stream=True)
        sock.sendall(conn.data_to_send())
        sock.settimeout(3)
        answered: set[int] = set()
        terminated = None
        with contextlib.suppress(OSError):
            while len(answered) < 100 and terminated is None:
                data = sock.recv(1 << 20)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        answered.add(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        terminated = event.error_code
                sock.sendall(conn.data_to_send())
        sock.close()
        assert terminated is None and len(answered) >= 100, (
            f"GOAWAY {terminated!r}; {len(answered)} of the 100 streams within the limit answered")


@pytest.mark.parametrize("hosts", [b"", b"Host: a.example\r\nHost: b.example\r\n"], ids=["no-host", "two-hosts"])
def test_h1_request_without_exactly_one_host_is_refused(pytusd_factory, hosts):
    """HTTP/1.1 without Host, or with two: RFC 9112 section 3.2 says a server MUST answer 400; Go's server does
    (``400 Bad Request: missing required Host header``). pytusd serves them (201, a Location made from its own
    address or from "localhost"), so a proxy in front and pytusd may disagree on which host a request was for."""
    server = pytusd_factory()
    answer = _exchange(server.port, b"POST /files/ HTTP/1.1\r\n" + hosts
                       + b"Tus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_h2_rapid_reset_against_pytusd_leaves_health_answering(pytusd_factory):
    """The rapid reset against the real server: 3 s of POST-then-RST_STREAM on one h2c connection. Measured: 10 s
    of it opened 192,600 streams, each ran TusApp's POST (135,000 uploads created on disk and counting), RSS went
    41 MB -> 550 MB, and /health stopped answering for more than 45 s after the client had gone. Go's server keeps
    at most MaxConcurrentStreams handlers per connection running, so the rest of the server stays responsive."""
    import httpx

    server = pytusd_factory("-enable-h2c")
    sock, conn = h2_client(server.port)
    sock.setblocking(False)
    headers = [(b":method", b"POST"), (b":path", b"/files/"), (b":scheme", b"http"), (b":authority", b"x"),
               (b"tus-resumable", b"1.0.0"), (b"upload-length", b"10")]
    deadline = time.monotonic() + 3
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            for _ in range(50):
                stream_id = conn.get_next_available_stream_id()
                conn.send_headers(stream_id, headers, end_stream=True)
                conn.reset_stream(stream_id)
            data = conn.data_to_send()
            while data and time.monotonic() < deadline:
                try:
                    data = data[sock.send(data):]
                except BlockingIOError:
                    time.sleep(0.005)
            with contextlib.suppress(BlockingIOError):
                while sock.recv(1 << 20):
                    pass
    sock.close()
    started = time.monotonic()
    try:
        status = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5).status_code
    except httpx.TimeoutException:
        status = None
    took = time.monotonic() - started
    uploads = len(list(server.upload_dir.glob("*.info")))
    assert status == 200 and took < 2, f"/health: {status} after {took:.1f} s; {uploads} uploads created so far"


@pytest.mark.parametrize("frame", ["ping", "settings"])
def test_h2_control_frame_flood_from_a_reading_client_leaves_health_answering(pytusd_factory, frame):
    """CVE-2019-9512 / CVE-2019-9515 (ping and settings floods), from a client that does read its ACKs: one
    connection sending PING (or empty SETTINGS) frames as fast as it can. H2Connection.data_received feeds each
    read to h2, which answers every frame in Python before the loop moves on, and nothing bounds the work one
    connection gets per loop wake-up: measured, every /health probe during an 8 s flood timed out at 10 s (the
    server recovers once the flood stops). Go's server answers other connections meanwhile (and caps queued
    control frames); pytusd should bound the frames it handles per wake-up (pause reading, resume with call_soon)
    or cut a connection that floods control frames."""
    import threading as _threading

    import httpx
    from hyperframe.frame import SettingsFrame

    server = pytusd_factory("-enable-h2c")
    sock, _ = h2_client(server.port)
    if frame == "ping":
        one = PingFrame(0)
        one.opaque_data = b"12345678"
    else:
        one = SettingsFrame(0)
    blob = one.serialize() * 5000
    stop = _threading.Event()

    def reader() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set() and sock.recv(1 << 20):
                pass

    def flood() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                sock.sendall(blob)

    threads = [_threading.Thread(target=reader, daemon=True), _threading.Thread(target=flood, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        slowest = 0.0
        for _ in range(3):
            started = time.monotonic()
            try:
                httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
                slowest = max(slowest, time.monotonic() - started)
            except httpx.TimeoutException:
                slowest = 99.0
                break
    finally:
        stop.set()
        sock.close()
    assert slowest < 1.0, f"/health took {slowest:.1f} s during a {frame} flood from one connection"


def test_h2_client_goaway_after_its_last_data_keeps_the_upload(pytusd_factory):
    """A client sends its whole upload and then GOAWAY (NO_ERROR: "I open no more streams"), in one write. Every
    byte must be stored, without a traceback. h2 closes its connection state on a received GOAWAY and takes no
    further frame to send after it, so the 204 cannot be sent (Go's server sends it): the client gets the connection
    closed after its data, and a HEAD shows the upload complete. (Found by the attack review: before, the DATA was
    dropped with "Fatal error on transport".)"""
    from hyperframe.frame import DataFrame, GoAwayFrame

    server = pytusd_factory("-enable-h2c")
    size = 40_000
    import httpx

    created = httpx.post(f"http://127.0.0.1:{server.port}/files/",
                         headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size)})
    upload_id = created.headers["location"].rsplit("/", 1)[1]
    sock, conn = h2_client(server.port)
    conn.send_headers(1, [
        (b":method", b"PATCH"), (b":path", f"/files/{upload_id}".encode()), (b":scheme", b"http"),
        (b":authority", b"x"), (b"tus-resumable", b"1.0.0"), (b"upload-offset", b"0"),
        (b"content-type", b"application/offset+octet-stream"), (b"content-length", str(size).encode())])
    wire = conn.data_to_send()
    for start in range(0, size, 10_000):
        frame = DataFrame(1)
        frame.data = b"d" * 10_000
        if start + 10_000 >= size:
            frame.flags.add("END_STREAM")
        wire += frame.serialize()
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 0
    sock.sendall(wire + goaway.serialize())
    sock.settimeout(3)
    status = None
    decoder = hpack.Decoder()
    for frame in raw_frames(sock):
        if isinstance(frame, HeadersFrame) and frame.stream_id == 1:
            status = dict(decoder.decode(frame.data, raw=True)).get(b":status")
            break
    sock.close()
    time.sleep(0.5)
    stored = (server.upload_dir / upload_id).stat().st_size
    log = server.log()
    assert "Traceback" not in log, log[-2000:]
    assert stored == size and status in (None, b"204"), f"stored {stored} of {size} bytes; answer {status!r}"


def test_h2_data_beyond_content_length_ends_the_connection_cleanly():
    """A stream whose DATA goes past its content-length is malformed. RFC 9113 section 8.1.1 makes it a stream error
    and Go resets the one stream; h2 makes it a connection error (no public switch), so pytusd closes the connection
    with GOAWAY PROTOCOL_ERROR: the app never sees more than the declared 5 bytes of the stream, and the log no
    traceback. (A limitation of h2, documented in README.)"""

    seen: list[int] = []  # body bytes each request had received, after each message

    async def echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan")
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            size += len(message.get("body", b""))
            seen.append(size)
            if not message.get("more_body"):
                break
        body = str(size).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    with serve(echo_length, enable_h2c=True) as (server, port):
        sock, conn = h2_client(port)
        conn.config.validate_outbound_headers = False
        for stream_id, length in ((1, b"10"), (3, b"5")):
            conn.send_headers(stream_id, [(b":method", b"PUT"), (b":path", b"/"), (b":scheme", b"http"),
                                          (b":authority", b"x"), (b"content-length", length)])
        conn.send_data(1, b"a" * 5)
        sock.sendall(conn.data_to_send())
        time.sleep(0.3)
        bad = DataFrame(3)
        bad.data = b"b" * 50  # 50 bytes on a stream that said 5
        bad.flags.add("END_STREAM")
        sock.sendall(bad.serialize())
        time.sleep(0.3)
        conn.send_data(1, b"a" * 5, end_stream=True)
        with contextlib.suppress(OSError):
            sock.sendall(conn.data_to_send())
        sock.settimeout(3)
        decoder = hpack.Decoder()
        answered, goaway = None, None
        for frame in raw_frames(sock):
            if isinstance(frame, HeadersFrame):
                headers = dict(decoder.decode(frame.data, raw=True))
                if frame.stream_id == 1:
                    answered = headers.get(b":status")
                    break
            elif isinstance(frame, GoAwayFrame):
                goaway = frame.error_code
        sock.close()
        assert goaway == 1 and answered is None, f"GOAWAY {goaway!r}; stream 1 answered {answered!r}"
        assert all(size <= 10 for size in seen), seen


def test_a_head_of_many_repeated_fields_is_cheap(pytusd_factory):
    """170,000 repetitions of ``X: y`` (1 MB, within the 1 MiB head limit): pytusd's server parses them in about
    0.1 s, but the request then takes about 1 s of event-loop time (measured: 50k fields 0.11 s, 100k 0.36 s, 150k
    0.78 s, 170k 1.01 s: quadratic; pytusd.core.http._headers re-builds the joined string of a repeated field for every
    repetition), during which no other connection is served. A client repeating such heads keeps one core busy for
    about 1 MB/s of traffic. Go reads such a head in milliseconds."""
    server = pytusd_factory()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"X: y\r\n" * 170_000 + b"\r\n"
    started = time.monotonic()
    answer = _exchange(server.port, head, wait=15)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert took < 0.5, f"one 1 MB head took {took:.2f} s to answer"


def test_tls_handshake_that_never_comes_is_cut_at_the_network_timeout(pytusd_factory, tmp_path):
    """A TLS client that connects and never sends its ClientHello: the server's TLS listener uses asyncio's default
    ssl_handshake_timeout (60 s; Server._listen passes none), so --network-timeout (here 1 s) does not apply until
    the handshake is done, and each such connection holds a descriptor for a minute. Go's server bounds the
    handshake by ReadHeaderTimeout / ReadTimeout (net/http conn.serve), which tusd sets from its network timeout."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], capture_output=True, check=True)
    server = pytusd_factory("--tls-certificate", str(cert), "--tls-key", str(key), "--network-timeout", "1s")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    started = time.monotonic()
    with contextlib.suppress(OSError):
        sock.recv(100)
    took = time.monotonic() - started
    sock.close()
    assert took < 5, f"a silent TLS client was held {took:.0f} s with --network-timeout 1s"
