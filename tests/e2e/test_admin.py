"""Admin commands against the store a running server uses: list, info, delete (with lock handover), per store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import httpx
import pytest

from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY

from .conftest import RawUpload, tus_patch_headers

pytestmark = pytest.mark.e2e

TUS = {"Tus-Resumable": "1.0.0"}


def pytusd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytusd", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )


def create(url: str, length: int, filename: str) -> str:
    import base64

    metadata = "filename " + base64.b64encode(filename.encode()).decode()
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata})
    assert r.status_code == 201
    return r.headers["location"].rsplit("/files/", 1)[1]


def test_list_info_delete_on_the_file_store(pytusd_factory, tmp_path):
    server = pytusd_factory("--expiration", "1h")
    done = create(server.url, 3, "done.txt")
    r = httpx.patch(f"{server.url}{done}", content=b"abc",
                    headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert r.status_code == 204
    busy = create(server.url, 1000, "busy.bin")
    flags = ["--upload-dir", str(server.upload_dir), "--expiration", "1h"]

    listed = pytusd("list", "--json", *flags)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[done]["state"] == "finished" and rows[done]["offset"] == 3 and rows[done]["expires"] is None
    assert rows[busy]["state"] == "receiving" and rows[busy]["filename"] == "busy.bin" and rows[busy]["expires"]
    text = pytusd("list", *flags).stdout.splitlines()
    assert text[0].split()[:4] == ["ID", "SIZE", "OFFSET", "STATE"] and len(text) == 3

    shown = pytusd("info", done, *flags)
    assert shown.returncode == 0 and f"id: {done}" in shown.stdout and "filename: done.txt" in shown.stdout

    # delete takes the lock from a PATCH that hangs on the running server.
    hanging = RawUpload(server.port, "PATCH", f"/files/{busy}", tus_patch_headers(0, 1000))
    hanging.send(b"x" * 100)
    deleted = pytusd("delete", busy, *flags)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith(f"deleted {busy}")
    status, _, body = hanging.response()
    assert status == 400 and body.startswith(b"ERR_UPLOAD_INTERRUPTED")
    hanging.close()
    assert httpx.head(f"{server.url}{busy}", headers=TUS).status_code == 404

    missing = pytusd("info", busy, *flags)
    assert missing.returncode == 1 and f"upload {busy} does not exist in FileStore(" in missing.stderr
    assert pytusd("delete", *flags).returncode == 2  # no ID


def test_list_and_delete_on_s3(pytusd_factory, s3_endpoint):
    import boto3

    bucket = f"admin-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=S3_ACCESS_KEY,
                 aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1").create_bucket(Bucket=bucket)
    env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    os.environ.update(env)
    try:
        flags = ["--s3-bucket", bucket, "--s3-endpoint", s3_endpoint]
        server = pytusd_factory(*flags)
        first, second = create(server.url, 10, "a"), create(server.url, 20, "b")
        rows = json.loads(pytusd("list", "--json", *flags, env=env).stdout)
        assert {row["id"] for row in rows} == {first, second}
        assert pytusd("delete", first, *flags, env=env).returncode == 0
        rows = json.loads(pytusd("list", "--json", *flags, env=env).stdout)
        assert [row["id"] for row in rows] == [second]
    finally:
        for key in env:
            os.environ.pop(key, None)


def test_delete_tells_the_post_terminate_hook(pytusd_factory, tmp_path):
    """pytusd delete is a termination like a DELETE request: the application's post-terminate hook hears of it."""
    server = pytusd_factory()
    upload_id = create(server.url, 5, "gone.txt")
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    seen = tmp_path / "seen.json"
    script = hooks / "post-terminate"
    script.write_text(f"#!/bin/sh\ncat > {seen}\n")
    script.chmod(0o755)
    deleted = pytusd("delete", upload_id, "--upload-dir", str(server.upload_dir), "--hooks-dir", str(hooks))
    assert deleted.returncode == 0, deleted.stderr
    event = json.loads(seen.read_text())
    assert event["Type"] == "post-terminate"
    assert event["Event"]["Upload"]["ID"] == upload_id
    assert event["Event"]["Upload"]["MetaData"]["filename"] == "gone.txt"
    assert event["Event"]["HTTPRequest"]["Method"] == "DELETE"
