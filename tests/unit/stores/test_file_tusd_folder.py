"""The file store reads an upload folder written by tusd (the same .info JSON and data files), and an unreadable
.info is a clean 500."""

from __future__ import annotations

import json

from tests.conftest import patch


# -- tusd compatibility of the data folder --------------------------------------------------------------------------


async def test_reads_an_upload_folder_written_by_tusd(client, upload_dir):
    upload_dir.mkdir(parents=True, exist_ok=True)
    upload_id = "8f1b2c3d4e5f60718293a4b5c6d7e8f9"
    (upload_dir / upload_id).write_bytes(b"hello")
    # As tusd's filestore writes it: Offset stale at 0, PartialUploads null.
    (upload_dir / f"{upload_id}.info").write_text(
        json.dumps(
            {
                "ID": upload_id,
                "Size": 10,
                "SizeIsDeferred": False,
                "Offset": 0,
                "MetaData": {"filename": "x.bin"},
                "IsPartial": False,
                "IsFinal": False,
                "PartialUploads": None,
                "Storage": {"Type": "filestore", "Path": str(upload_dir / upload_id),
                            "InfoPath": str(upload_dir / f"{upload_id}.info")},
            }
        )
    )
    r = await client.head(f"/files/{upload_id}")
    assert r.headers["upload-offset"] == "5" and r.headers["upload-length"] == "10"
    r = await patch(client, f"/files/{upload_id}", 5, b"world")
    assert r.headers["upload-offset"] == "10"
    assert (upload_dir / upload_id).read_bytes() == b"helloworld"


async def test_unreadable_info_is_a_clean_500(client, upload_dir):
    upload_dir.mkdir(parents=True, exist_ok=True)
    (upload_dir / "broken").write_bytes(b"")
    (upload_dir / "broken.info").write_text("{not json")
    r = await client.head("/files/broken")
    assert r.status_code == 500
    r = await client.get("/files/broken")
    assert r.status_code == 500 and r.text.startswith("ERR_INTERNAL_SERVER_ERROR")
