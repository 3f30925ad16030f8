"""Real tus clients against a real pytusd process: each upload is interrupted at about half and resumed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import httpx
import pytest
from tusclient import client as tus_client

pytestmark = pytest.mark.e2e


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def source_file(tmp_path):
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(24 * 1024 * 1024 + 12345))
    return path


def stored_path(server, url: str):
    return server.upload_dir / url.rstrip("/").rsplit("/", 1)[1]


@pytest.mark.parametrize("locker", ["file", "memory"])
def test_tuspy_interrupted_at_half_and_resumed(pytusd_factory, source_file, locker):
    server = pytusd_factory("--locker", locker)
    size = source_file.stat().st_size
    client = tus_client.TusClient(server.url)
    first = client.uploader(file_path=str(source_file), chunk_size=1024 * 1024)
    first.upload(stop_at=size // 2)
    url = first.url
    assert url.startswith(server.url)
    offset = int(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["upload-offset"])
    assert size // 2 <= offset < size

    # A new client (as after a restart of the uploading program) resumes from the server's offset.
    second = tus_client.TusClient(server.url).uploader(file_path=str(source_file), url=url, chunk_size=4 * 1024 * 1024)
    assert second.offset == offset
    second.upload()
    assert sha256(stored_path(server, url)) == sha256(source_file)
    head = httpx.head(url, headers={"Tus-Resumable": "1.0.0"})
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(size)


def test_tuspy_with_metadata_and_download(pytusd, source_file):
    client = tus_client.TusClient(pytusd.url)
    uploader = client.uploader(
        file_path=str(source_file), chunk_size=8 * 1024 * 1024, metadata={"filename": "source.bin"}
    )
    uploader.upload()
    response = httpx.get(uploader.url)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha256(source_file)
    assert response.headers["content-disposition"] == 'attachment; filename="source.bin"'


@pytest.mark.parametrize("locker", ["file", "memory"])
def test_tus_js_client_interrupted_mid_request_and_resumed(pytusd_factory, node_client, source_file, tmp_path, locker,
                                                           toxiproxy):
    server = pytusd_factory("--locker", locker)
    # One PATCH for the whole file, aborted part-way: the server keeps what arrived before the connection dropped.
    # Over plain loopback the whole file can arrive before the abort lands (pytusd splices it at GB/s): the client
    # goes through a proxy that passes 20 MB/s (about 1.3 s for the file), and an attempt that still got through
    # whole is repeated with a new upload.
    proxy = toxiproxy(f"127.0.0.1:{server.port}", rate=20_000)
    for attempt in range(20):
        storage = tmp_path / f"urls-{attempt}.json"
        run = [*node_client, f"http://{proxy.listen}/files/", str(source_file), str(storage)]
        first = subprocess.run([*run, "--stop-at", "0.2"], capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        stopped = json.loads(first.stdout)
        if stopped["stopped"]:
            break
    assert stopped["stopped"] is True
    url = stopped["url"]
    size = source_file.stat().st_size
    offset = int(httpx.head(url, headers={"Tus-Resumable": "1.0.0"}).headers["upload-offset"])
    assert 0 < offset < size

    second = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    done = json.loads(second.stdout)
    assert done["url"] == url and done["resumedFrom"] == url
    assert sha256(stored_path(server, url)) == sha256(source_file)


def test_tus_js_client_small_chunks(pytusd, node_client, source_file, tmp_path):
    result = subprocess.run(
        [*node_client, pytusd.url, str(source_file), str(tmp_path / "u.json"), "--chunk-size", str(5 * 1024 * 1024)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    url = json.loads(result.stdout)["url"]
    assert sha256(stored_path(pytusd, url)) == sha256(source_file)


def test_tus_js_client_parallel_uploads_use_concatenation(pytusd, node_client, tmp_path):
    """parallelUploads: 4 makes tus-js-client upload four partials and concatenate them into a final upload."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(64 * 1024 * 1024))
    result = subprocess.run(
        [*node_client, pytusd.url, str(source), str(tmp_path / "p.json"), "--parallel", "4"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    url = json.loads(result.stdout)["url"]
    head = httpx.head(url, headers={"Tus-Resumable": "1.0.0"})
    concat = head.headers["upload-concat"]
    assert concat.startswith("final;") and len(concat[len("final;"):].split(" ")) == 4
    assert sha256(stored_path(pytusd, url)) == sha256(source)
