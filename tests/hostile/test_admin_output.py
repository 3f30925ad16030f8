"""Client text on the admin's terminal: a filename (Upload-Metadata) with escape sequences and line feeds reached
``pytusd list`` raw, recoloured the terminal and forged table rows. Every value printed as text now goes through
:func:`pytusd.server.admin.printable` (control, format, separator characters become visible escapes); ``--json`` is
ASCII-escaped. Logs keep one line per record whatever the request path or the exception text.

Through the real commands: a real ``pytusd`` process takes the uploads, ``pytusd list/info/delete`` read its folder.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import subprocess
import sys
import unicodedata

import httpx
import pytest

from pytusd.observe import logs
from pytusd.server.admin import printable

TUS = {"Tus-Resumable": "1.0.0"}
HOSTILE_NAME = ("report\x1b[31m.pdf\nFAKE-ID  1 B  1 B  finished  fake.txt\r\x1b[2K\u202etxt.exe\u2066x\u2069"
                "\u2028next\u2029para\x85c1\u200bzw\ufeffbom\x7fdel\x00nul\\x1b")
ESCAPED_NAME = ("report\\x1b[31m.pdf\\nFAKE-ID  1 B  1 B  finished  fake.txt\\r\\x1b[2K\\u202etxt.exe\\u2066x\\u2069"
                "\\u2028next\\u2029para\\x85c1\\u200bzw\\ufeffbom\\x7fdel\\x00nul\\\\x1b")


def hidden(text: str) -> list[str]:
    """Characters a terminal would act on or hide, rather than show."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs") and c != "\n"]


def test_printable():
    assert printable(HOSTILE_NAME) == ESCAPED_NAME
    assert hidden(printable(HOSTILE_NAME)) == [] and "\n" not in printable(HOSTILE_NAME)
    assert printable("plain name é 中文.txt") == "plain name é 中文.txt"
    assert printable("\udc80\U000e0001") == "\\udc80\\U000e0001"  # a lone surrogate, a tag character
    for code in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
                 0x200B, 0x200E, 0x200F, 0xFEFF]:
        escaped = printable(chr(code))
        assert escaped.startswith("\\") and escaped.isascii() and escaped.isprintable(), hex(code)


def command(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "pytusd", *args], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def create(url: str, filename: str, length: int = 10) -> str:
    metadata = "filename " + base64.b64encode(filename.encode("utf-8", "surrogatepass")).decode()
    r = httpx.post(url, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata})
    assert r.status_code == 201, r.text
    return r.headers["location"].rsplit("/", 1)[1]


@pytest.mark.e2e
def test_list_info_delete_show_client_text_escaped(pytusd_factory):
    server = pytusd_factory()
    evil = create(server.url, HOSTILE_NAME)
    plain = create(server.url, "plain.txt")
    flags = ("--upload-dir", str(server.upload_dir))

    listed = command("list", *flags)
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout.decode("utf-8")
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) == 1 + 2 + 1, out  # the header, one row per upload, the final line break
    assert hidden(out) == [], [hex(ord(c)) for c in hidden(out)]
    assert lines[0].split()[:5] == ["ID", "SIZE", "OFFSET", "STATE", "FILENAME"]
    [row] = [line for line in lines if line.startswith(evil)]
    assert ESCAPED_NAME in row
    assert any(line.startswith(plain) and line.rstrip().endswith("plain.txt") for line in lines)

    shown = command("info", evil, *flags)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode("utf-8")
    assert hidden(out) == []
    info_lines = out.rstrip("\n").split("\n")
    assert [line.split(":", 1)[0] for line in info_lines] == [
        "id", "size", "offset", "state", "filename", "partial", "final", "expires", "metadata", "storage"]
    assert f"filename: {ESCAPED_NAME}" in info_lines
    metadata = json.loads(info_lines[8].split(": ", 1)[1])
    assert metadata["filename"] == HOSTILE_NAME

    as_json = command("list", "--json", *flags)
    raw = as_json.stdout.decode("ascii")  # json.dumps escapes every non-ASCII character
    assert all(c == "\n" or " " <= c <= "~" for c in raw)
    assert {row["id"]: row["filename"] for row in json.loads(raw)} == {evil: HOSTILE_NAME, plain: "plain.txt"}

    # An error naming what the admin typed, and delete's own line.
    missing = command("info", "nope\x1b[2J\u202e", *flags)
    assert missing.returncode == 1 and b"upload nope\\x1b[2J\\u202e does not exist" in missing.stderr, missing.stderr
    assert hidden(missing.stderr.decode("utf-8")) == [] and missing.stderr.count(b"\n") == 1
    deleted = command("delete", evil, *flags)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.decode() == f"deleted {evil} (0 B of 10 B)\n"


@pytest.mark.e2e
def test_a_hostile_file_in_the_upload_folder_is_listed_escaped(pytusd_factory):
    """IDs come from the folder's file names too: one made to look like two rows is no upload ID, so it is not listed
    (and were a store to list it, printable() would keep it on its row)."""
    server = pytusd_factory()
    upload_id = create(server.url, "x.bin")
    info = json.loads((server.upload_dir / f"{upload_id}.info").read_text())
    forged = "a\nb\x1b[31m"
    info["ID"] = forged
    (server.upload_dir / f"{forged}.info").write_text(json.dumps(info))
    (server.upload_dir / forged).write_bytes(b"")
    listed = command("list", "--upload-dir", str(server.upload_dir))
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout.decode("utf-8")
    assert hidden(out) == [] and out.count("\n") == 2 and out.split("\n")[1].startswith(upload_id), out


# -- logs: one line per record, nothing a terminal acts on ----------------------------------------------------------


HOSTILE_PATH = "/files/%0a%1b%5b31mFAKE%20level=ERROR%20msg=forged%0d%e2%80%ae%c2%85%00end"


def _raw_get(port: int, target: str, extra: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.e2e
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_stay_one_line_per_record(pytusd_factory, log_format):
    server = pytusd_factory("--log-format", log_format)
    upload_id = create(server.url, HOSTILE_NAME)
    answer = _raw_get(server.port, HOSTILE_PATH, "X-Request-ID: a b\xe9\r\nX-HTTP-Method-Override: x\xe9\r\n")
    assert answer.startswith(b"HTTP/1.1 404 ") or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    httpx.head(f"{server.url}{upload_id}", headers=TUS)
    server.stop()  # every line written
    text = server.log_path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    assert lines[-1] == ""
    assert hidden(text) == [], [hex(ord(c)) for c in hidden(text)]
    # tusd's own fixed lines (on stdout, as tusd prints them: pytusd.server.lifecycle.tusd_line) are not log records
    tusd_lines = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6} (You can now upload files to: http://127\.0\.0\.1:"
                            r"\d+/files/|Received interrupt signal\. Shutting down pytusd\.\.\.|Shutdown completed\. Goodbye!)$")
    assert len([line for line in lines if tusd_lines.match(line)]) == 3, lines
    for line in lines[:-1]:  # each a whole record, none forged into an ERROR
        if tusd_lines.match(line):
            continue
        if log_format == "json":
            level = json.loads(line)["level"]
        else:
            match = re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=([A-Z]+) msg=\"", line)
            assert match, line
            level = match.group(1)
        assert level in ("INFO", "WARNING"), line
    completed = [line for line in lines if "RequestCompleted" in line and "FAKE" in line]
    assert len(completed) == 1, lines
    if log_format == "json":
        entry = json.loads(completed[0])
        assert entry["path"].startswith("/files/\n\x1b[31mFAKE level=ERROR msg=forged\r\u202e")
    else:
        assert '\\n\\u001b[31mFAKE level=ERROR msg=forged\\r\\u202e' in completed[0]


def test_a_traceback_is_one_line_in_text_logs():
    try:
        raise ValueError("no upload at /files/\n2026-01-01T00:00:00.000Z level=INFO msg=\"forged\"\x1b[2J")
    except ValueError:
        record = logging.getLogger("pytusd").makeRecord(
            "pytusd", logging.ERROR, __file__, 1, "unexpected error in %s", ("GET /files/\n",), sys.exc_info())
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        line = formatter.format(record)
        assert "\n" not in line and hidden(line) == [] and line.isascii(), line
        assert "forged" in line and "Traceback" in line


@pytest.mark.e2e
def test_a_terminal_that_cannot_show_a_name_gets_escapes_not_a_crash(pytusd_factory):
    """An ordinary non-ASCII filename on an admin terminal whose encoding lacks it (Latin-1, ASCII)."""
    server = pytusd_factory()
    upload_id = create(server.url, "报告.pdf")
    for encoding in ("latin-1", "ascii"):
        listed = subprocess.run([sys.executable, "-m", "pytusd", "list", "--upload-dir", str(server.upload_dir)],
                                capture_output=True, timeout=60, env={**os.environ, "PYTHONIOENCODING": encoding})
        assert listed.returncode == 0, listed.stderr
        row = listed.stdout.decode(encoding).splitlines()[1]
        assert row.startswith(upload_id) and "\\u62a5\\u544a.pdf" in row
