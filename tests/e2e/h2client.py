"""A small blocking HTTP/2 client on the ``h2`` library, for what httpx and curl cannot do: several streams of one
connection driven one frame at a time, request trailers, and interim (1xx) responses seen as they come."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    interim: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # 1xx responses, in order
    body: bytes = b""
    ended: bool = False
    reset: bool = False


def _decode(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {bytes(k).decode(): bytes(v).decode() for k, v in headers}


class H2Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.authority = f"{host}:{port}"
        self.answers: dict[int, Answer] = {}
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, end: bool = True) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        pseudo = [(":method", method), (":path", path), (":scheme", "http"), (":authority", self.authority)]
        all_headers = pseudo + [(k.lower(), v) for k, v in (headers or {}).items()]
        self.h2.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in all_headers], end_stream=end)
        self.answers[stream_id] = Answer()
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Send ``data`` on the stream, waiting for flow-control window as needed."""
        view = memoryview(data)
        while view:
            room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if room <= 0:
                self.pump()
                continue
            self.h2.send_data(stream_id, bytes(view[:room]), end_stream=end and room >= len(view))
            view = view[room:]
            self.flush()
        if end and not data:
            self.h2.end_stream(stream_id)
            self.flush()

    def trailers(self, stream_id: int, trailers: dict[str, str]) -> None:
        self.h2.send_headers(stream_id, [(k.lower().encode(), v.encode()) for k, v in trailers.items()],
                             end_stream=True)
        self.flush()

    def pump(self) -> None:
        """Read once from the socket and take in what it says."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in self.h2.receive_data(data):
            answer = self.answers.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.InformationalResponseReceived) and answer is not None:
                headers = _decode(event.headers)
                answer.interim.append((int(headers[":status"]), headers))
            elif isinstance(event, h2.events.ResponseReceived) and answer is not None:
                answer.headers = _decode(event.headers)
                answer.status = int(answer.headers[":status"])
            elif isinstance(event, h2.events.DataReceived) and answer is not None:
                answer.body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and answer is not None:
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset) and answer is not None:
                answer.reset = True
        self.flush()

    def wait(self, stream_id: int, *, status: bool = False) -> Answer:
        """Wait until the stream's response has ended (or, with ``status``, until its status is known)."""
        answer = self.answers[stream_id]
        while not (answer.ended or answer.reset or (status and answer.status)):
            self.pump()
        return answer

    def close(self) -> None:
        self.sock.close()
