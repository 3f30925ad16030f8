"""The object stores through the ``pytusd`` command: an upload interrupted by a shutdown resumes after a restart.

For S3 (Ceph), Azure Blob (Azurite) and GCS (the emulator): the first process is stopped with SIGTERM while a PATCH
is sending; it stores what it received and answers 503. A second process, started fresh, reports an offset no larger
than what was sent, takes the rest, and the download is byte-exact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid

import httpx
import pytest

from testbed.services import AZURITE_ACCOUNT, AZURITE_KEY, S3_ACCESS_KEY, S3_SECRET_KEY

from .conftest import RawUpload, tus_patch_headers

pytestmark = pytest.mark.e2e

MIB = 1 << 20
TUS = {"Tus-Resumable": "1.0.0"}


def s3_backend(request, monkeypatch) -> list[str]:
    import boto3

    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    bucket = f"restart-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return ["--s3-bucket", bucket, "--s3-endpoint", endpoint, "--s3-object-prefix", "up/"]


def azure_backend(request, monkeypatch) -> list[str]:
    endpoint = request.getfixturevalue("azure_endpoint")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", AZURITE_ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", AZURITE_KEY)
    container = f"restart-{uuid.uuid4().hex[:8]}"
    return ["--azure-storage", container, "--azure-endpoint", endpoint, "--azure-object-prefix", "up/"]


def gcs_backend(request, monkeypatch) -> list[str]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    endpoint = request.getfixturevalue("gcs_endpoint")
    bucket = f"restart-{uuid.uuid4().hex[:8]}"
    client = storage.Client(project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint})
    client.create_bucket(bucket)
    return ["--gcs-bucket", bucket, "--gcs-endpoint", endpoint, "--gcs-object-prefix", "up/"]


def s3_readable_backend(request, monkeypatch) -> list[str]:
    return [*s3_backend(request, monkeypatch), "--s3-readable-uploads"]


BACKENDS = {"s3": s3_backend, "s3-readable": s3_readable_backend, "azure": azure_backend, "gcs": gcs_backend}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_interrupted_by_shutdown_resumed_after_restart(backend, request, monkeypatch, pytusd_factory):
    args = BACKENDS[backend](request, monkeypatch)
    server = pytusd_factory(*args, "--shutdown-timeout", "10s")
    size = 12 * MIB + 3
    data = os.urandom(size)
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": "filename YS5iaW4="})
    assert r.status_code == 201, r.text
    url = r.headers["location"]
    path = "/files/" + url.split("/files/", 1)[1]
    sent = 7 * MIB
    patch = RawUpload(server.port, "PATCH", path, tus_patch_headers(0, size))
    patch.send(data[:sent])
    time.sleep(1.0)
    server.signal(signal.SIGTERM)
    status, _, body = patch.response()
    assert status == 503 and body.startswith(b"ERR_SERVER_SHUTDOWN"), body
    patch.close()
    server.wait(20)

    restarted = pytusd_factory(*args, port=server.port)
    offset = int(httpx.head(url, headers=TUS).headers["upload-offset"])
    assert 0 < offset <= sent
    if backend == "s3-readable":  # the unfinished upload reads back what is stored, in whole and in a range
        r = httpx.get(url, headers=TUS, timeout=60)
        assert r.status_code == 200 and r.content == data[:offset]
        r = httpx.get(url, headers={**TUS, "Range": f"bytes={offset - 10}-"}, timeout=60)
        assert r.status_code == 206 and r.content == data[offset - 10 : offset]
    elif backend == "s3":
        assert httpx.get(url, headers=TUS).status_code == 400
    r = httpx.patch(
        url, headers={**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        content=data[offset:], timeout=60,
    )
    assert r.status_code == 204 and int(r.headers["upload-offset"]) == size
    stored = httpx.get(url, timeout=60).content
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    assert restarted.log().count("PATCH") >= 1


def test_azure_unfinished_upload_is_read_then_removed_by_the_cleanup_command(request, monkeypatch, pytusd_factory):
    """Azure through the command: GET of an unfinished upload serves the bytes stored so far; ``pytusd cleanup``
    then removes it once expired, leaving nothing but ``.expired`` (uncommitted blocks included), and a new server
    answers 410."""
    import subprocess
    import sys

    from azure.storage.blob import BlobServiceClient

    args = azure_backend(request, monkeypatch)
    server = pytusd_factory(*args)
    data = os.urandom(3 * MIB)
    r = httpx.post(server.url, headers={**TUS, "Upload-Length": str(len(data))})
    url = r.headers["location"]
    stored = MIB + 10
    r = httpx.patch(url, headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                    content=data[:stored])
    assert r.status_code == 204 and r.headers["upload-offset"] == str(stored)
    r = httpx.get(url, headers=TUS)
    assert r.status_code == 200 and r.content == data[:stored]
    r = httpx.get(url, headers={**TUS, "Range": f"bytes={MIB - 5}-{MIB + 4}"})
    assert r.status_code == 206 and r.content == data[MIB - 5 : MIB + 5]
    server.stop()
    time.sleep(2.2)  # Last-Modified has whole seconds

    run = subprocess.run([sys.executable, "-m", "pytusd", "cleanup", *args, "--expiration", "1s"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "removed 1 expired upload" in run.stdout, run.stdout + run.stderr
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    container = args[args.index("--azure-storage") + 1]
    service = BlobServiceClient(args[args.index("--azure-endpoint") + 1],
                                credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    listed = [b.name for b in service.get_container_client(container).list_blobs(include=["uncommittedblobs"])]
    assert listed == [f"up/{upload_id}.expired"]
    pytusd_factory(*args, port=server.port)
    assert httpx.head(url, headers=TUS).status_code == 410
