"""A small cluster: nginx round-robin over three pytusd processes, sharing one set of uploads.

tus-js-client uploads five 64 MiB files at once in 5 MiB PATCHes, so the PATCHes of one upload land on different
processes; mid-way one process is killed with SIGKILL. Every upload must complete, byte for byte. Once with S3
(Ceph RADOS Gateway) and Redis locks, once with the file store on a shared folder and file locks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY, nginx

from .conftest import NODE_DIR, PytusdProcess

pytestmark = pytest.mark.e2e

MIB = 1 << 20
FILES = 5
FILE_SIZE = 64 * MIB
CHUNK = 5 * MIB


@pytest.fixture
def files(tmp_path, node_client) -> list[Path]:
    paths = []
    for i in range(FILES):
        path = tmp_path / f"file{i}.bin"
        path.write_bytes(os.urandom(FILE_SIZE))
        paths.append(path)
    return paths


def sha256(data_or_path: bytes | Path) -> str:
    if isinstance(data_or_path, Path):
        h = hashlib.sha256()
        with open(data_or_path, "rb") as f:
            while block := f.read(MIB):
                h.update(block)
        return h.hexdigest()
    return hashlib.sha256(data_or_path).hexdigest()


def run_cluster(tmp_path: Path, files: list[Path], args: list[str], env: dict[str, str]) -> list[dict[str, str]]:
    """Start three pytusd processes behind nginx, upload ``files`` through it, kill one process at 30%."""
    servers = [PytusdProcess(tmp_path / "data", "--behind-proxy", *args) for _ in range(3)]
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for server in servers:
            server.start()
        with nginx(tmp_path / "nginx", [s.port for s in servers]) as port:
            cmd = [shutil.which("node") or "node", str(NODE_DIR / "many.mjs"), f"http://127.0.0.1:{port}/files/",
                   str(CHUNK), *map(str, files)]
            client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            killed = False
            result = None
            assert client.stdout is not None
            for line in client.stdout:
                message = json.loads(line)
                if "progress" in message and not killed and message["progress"] >= 0.3 * message["total"]:
                    servers[1].signal(signal.SIGKILL)
                    killed = True
                if "done" in message:
                    result = message["done"]
            assert client.wait(120) == 0, client.stderr.read() if client.stderr else ""
            assert killed and result is not None
            for server in servers:
                assert "PATCH" in server.log(), "every process served PATCHes"
            return result
    finally:
        for server in servers:
            server.stop()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_s3_and_redis_cluster_survives_a_killed_process(tmp_path, files, s3_endpoint, redis_url):
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )
    bucket = f"cluster-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_REGION": "us-east-1"}
    args = ["--s3-bucket", bucket, "--s3-endpoint", s3_endpoint, "--locker", "redis", "--redis-url", redis_url,
            "--redis-lock-ttl", "3s"]
    try:
        done = run_cluster(tmp_path, files, args, env)
        assert len(done) == FILES
        for entry in done:
            upload_id = entry["url"].split("/files/", 1)[1]
            object_id = upload_id.rpartition("+")[0]
            stored = s3.get_object(Bucket=bucket, Key=object_id)["Body"].read()
            assert sha256(stored) == sha256(Path(entry["file"])), entry
    finally:
        for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
        s3.delete_bucket(Bucket=bucket)


def test_file_store_cluster_on_a_shared_folder_survives_a_killed_process(tmp_path, files):
    done = run_cluster(tmp_path, files, ["--locker", "file"], {})
    assert len(done) == FILES
    for entry in done:
        upload_id = entry["url"].split("/files/", 1)[1]
        assert sha256(tmp_path / "data" / upload_id) == sha256(Path(entry["file"])), entry


@pytest.fixture
def s3_bucket(s3_endpoint):
    import boto3

    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )
    bucket = f"pytusd-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    yield s3, bucket
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)


def test_handover_between_processes_with_s3_and_redis(tmp_path, s3_endpoint, s3_bucket, redis_url, monkeypatch):
    """A PATCH hangs on process A; a HEAD on process B asks A (through Redis) to let go: A stores what it received
    in S3 and answers 400 ERR_UPLOAD_INTERRUPTED, and B answers with the new offset, all within about a second."""
    import time

    import httpx

    from .conftest import RawUpload, tus_patch_headers

    _, bucket = s3_bucket
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    args = ["--s3-bucket", bucket, "--s3-endpoint", s3_endpoint, "--locker", "redis", "--redis-url", redis_url]
    a = PytusdProcess(tmp_path / "a", *args).start()
    b = PytusdProcess(tmp_path / "b", *args).start()
    try:
        tus = {"Tus-Resumable": "1.0.0"}
        r = httpx.post(a.url, headers={**tus, "Upload-Length": "1000"})
        assert r.status_code == 201
        path = "/files/" + r.headers["location"].rsplit("/files/", 1)[1]
        data = os.urandom(1000)
        hanging = RawUpload(a.port, "PATCH", path, tus_patch_headers(0, 1000))
        hanging.send(data[:400])
        time.sleep(0.5)  # A has the lock and the 400 bytes in its spool

        started = time.monotonic()
        head = httpx.head(f"http://127.0.0.1:{b.port}{path}", headers=tus, timeout=10)
        assert head.status_code == 200 and head.headers["upload-offset"] == "400"
        assert time.monotonic() - started < 2
        status, _, body = hanging.response()
        assert status == 400 and body.startswith(b"ERR_UPLOAD_INTERRUPTED")
        hanging.close()

        r = httpx.patch(
            f"http://127.0.0.1:{b.port}{path}",
            headers={**tus, "Upload-Offset": "400", "Content-Type": "application/offset+octet-stream"},
            content=data[400:],
        )
        assert r.status_code == 204 and r.headers["upload-offset"] == "1000"
        assert httpx.get(f"http://127.0.0.1:{a.port}{path}").content == data
    finally:
        a.stop()
        b.stop()
