"""``pytusd --digest`` as a user runs it: pytusd's own server (where request bodies are otherwise spliced straight
into the file, never passing through Python), a hook script that reads the digest at post-finish, and a server
killed in the middle of an upload and replaced by a new process that finishes it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
MIB = 1 << 20


def field(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def test_large_patches_through_the_server_and_a_hook_script(pytusd_factory, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    seen = tmp_path / "post-finish.json"
    script = hooks / "post-finish"
    script.write_text(f"#!/bin/sh\ncat > {seen}.tmp && mv {seen}.tmp {seen}\n")
    script.chmod(0o755)
    server = pytusd_factory("--digest", "sha256", "--hooks-dir", str(hooks), "--hooks-enabled-events", "post-finish")
    data = os.urandom(40 * MIB + 5)  # bodies this large would be spliced without --digest
    with httpx.Client(timeout=60) as client:
        r = client.post(server.url, headers={**TUS, "Upload-Length": str(len(data))})
        url = r.headers["location"]
        r = client.patch(url, content=data[: 24 * MIB], headers={**PATCH, "Upload-Offset": "0"})
        assert r.status_code == 204
        r = client.patch(url, content=data[24 * MIB :], headers={**PATCH, "Upload-Offset": str(24 * MIB)})
        assert r.status_code == 204
        assert client.head(url, headers=TUS).headers["repr-digest"] == field(data)
        r = client.get(url, headers={**TUS, "Range": "bytes=0-9"})
        assert r.status_code == 206 and r.headers["repr-digest"] == field(data)
    for _ in range(200):
        if seen.exists():
            break
        import time

        time.sleep(0.05)
    event = json.loads(seen.read_text())
    assert event["Event"]["Upload"]["Storage"]["Repr-Digest"] == field(data)


def test_a_server_killed_mid_upload_is_replaced_and_the_digest_is_right(pytusd_factory, tmp_path):
    """SIGKILL while a PATCH streams: what reached the file may be more than the saved state covers; the new
    process catches up from the stored bytes, and the finished upload's digest is that of its content."""
    upload_dir = tmp_path / "data"
    first = pytusd_factory("--digest", "sha256", upload_dir=upload_dir)
    data = os.urandom(30 * MIB)
    with httpx.Client(timeout=60) as client:
        r = client.post(first.url, headers={**TUS, "Upload-Length": str(len(data))})
        url = r.headers["location"]
        assert client.patch(url, content=data[: 4 * MIB], headers={**PATCH, "Upload-Offset": "0"}).status_code == 204
    # A PATCH sent by hand, half of its body, then the server dies.
    path = url.split(str(first.port), 1)[1]
    with socket.create_connection(("127.0.0.1", first.port)) as sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {4 * MIB}\r\n"
            f"Content-Length: {len(data) - 4 * MIB}\r\n\r\n".encode()
        )
        sock.sendall(data[4 * MIB : 15 * MIB])
        import time

        time.sleep(0.5)
        first.signal(signal.SIGKILL)
    first.proc.wait(10)
    second = pytusd_factory("--digest", "sha256", upload_dir=upload_dir)
    url = url.replace(str(first.port), str(second.port))
    with httpx.Client(timeout=60) as client:
        offset = int(client.head(url, headers=TUS).headers["upload-offset"])
        assert 4 * MIB < offset <= 15 * MIB  # bytes stored past the saved state
        r = client.patch(url, content=data[offset:], headers={**PATCH, "Upload-Offset": str(offset)})
        assert r.status_code == 204
        assert f"catching the digest up from byte {4 * MIB} to {offset}" in second.log()
        r = client.get(url, headers=TUS)
        assert r.content == data and r.headers["repr-digest"] == field(data)
