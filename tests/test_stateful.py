"""A stateful model test: hypothesis drives TusApp with random sequences of requests, valid and invalid.

The model is a dict of upload ID -> what the upload must hold (length, bytes, metadata, concatenation). Every answer
is checked against it: the status and the tus error code, Upload-Offset and Upload-Length, the metadata echoed by
HEAD, the bytes GET returns. Bad input (wrong offsets, content types, checksums, lengths, metadata, bogus IDs and
paths) must be a tus error, never a 5xx, and every 4xx body starts with its ``ERR_`` code (checked for every
response by ``asgi_call``). Where concurrency matters (two PATCHes of one upload, a PATCH racing a DELETE, partials
completing together) requests run at once with ``asyncio.gather`` and the result must be one the model allows.

Steps and examples are counted and printed at the end ("hypothesis examples tried"). ``PYTUSD_STATEFUL_EXAMPLES``
and ``PYTUSD_STATEFUL_STEPS`` change how many sequences run and how long each is.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import hashlib
import os
import urllib.parse

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pytusd import MemoryLocker
from pytusd.core import grammar
from pytusd.info import download_headers, is_valid_upload_id

from .test_properties import (
    AppRunner,
    asgi_call,
    metadata_key,
    report_examples,
    unicode_text,
)

MAX_SIZE = 64
MAX_UPLOADS = 14
EXAMPLES = int(os.environ.get("PYTUSD_STATEFUL_EXAMPLES", "200"))
STEPS = int(os.environ.get("PYTUSD_STATEFUL_STEPS", "50"))

COUNTS: collections.Counter[str] = collections.Counter()

TUS = [(b"tus-resumable", b"1.0.0")]
OFFSET_TYPE = (b"content-type", b"application/offset+octet-stream")


@pytest.fixture(scope="module", autouse=True)
def _examples_summary(request):
    report_examples(request, "tests/test_stateful.py", COUNTS)
    yield
    COUNTS["= steps (all rules)"] = sum(n for k, n in COUNTS.items() if k.startswith("step: "))


def step(name: str) -> None:
    COUNTS["step: " + name] += 1


class YieldingLocker(MemoryLocker):
    """A MemoryLocker that lets other tasks run while it takes and gives back a lock, as the file and Redis lockers
    do: without it, in-process requests never overlap inside the short critical sections."""

    async def acquire(self, upload_id, on_release_request, timeout):  # type: ignore[no-untyped-def]
        lock = await super().acquire(upload_id, on_release_request, timeout)
        await asyncio.sleep(0.001)
        return lock


@dataclasses.dataclass
class Expected:
    """What one upload must be."""

    size: int | None  # None: deferred
    data: bytearray = dataclasses.field(default_factory=bytearray)
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    partial: bool = False
    parts: list[str] | None = None  # a final's partials, in order
    concatenated: bool = False

    @property
    def final(self) -> bool:
        return self.parts is not None

    @property
    def complete(self) -> bool:
        if self.final:
            return self.concatenated
        return self.size is not None and len(self.data) == self.size

    @property
    def offset(self) -> int:
        return len(self.data)


def sha1(data: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(data).digest())


valid_metadata = st.dictionaries(
    st.one_of(st.sampled_from(["filename", "filetype", "name"]), metadata_key),
    st.one_of(unicode_text, st.sampled_from(["image/png", "text/html", "a\r\nb", 'q"uote', "résumé.pdf"])),
    max_size=4,
)
invalid_metadata = st.sampled_from(
    [b"k !!!", b"k YQ", b"k Y Q==", b"k  YQ==", b"k\xe9 YQ==", b"a YQ==,a Yg==", b"k " + base64.b64encode(b"\xff"),
     b"k YQ== more", b"k\tYQ=="]
)
bodies = st.binary(max_size=24)
bogus_ids = st.one_of(
    st.sampled_from(["nope", "..", "%2e%2e", "a/../b", "a\x00b", "a\\b", "x" * 600, "é", ".", "a//b", "a/"]),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
)


class TusMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner = AppRunner(max_size=MAX_SIZE, locker=YieldingLocker())
        self.uploads: dict[str, Expected] = {}
        self.gone: list[str] = []
        COUNTS["= sequences (examples)"] += 1

    def teardown(self) -> None:
        try:
            self.verify_everything()
        finally:
            self.runner.close()

    # -- helpers ----------------------------------------------------------------------------------------------------

    def call(self, method: str, path: str, headers, body=b"", content_length=True):
        COUNTS["= requests sent"] += 1
        return self.runner.call(method, path, headers, body, content_length)

    @staticmethod
    def path(upload_id: str) -> str:
        return "/files/" + upload_id

    def pick(self, index: int, *, where=lambda e: True) -> str | None:
        ids = [i for i, e in self.uploads.items() if where(e)]
        return ids[index % len(ids)] if ids else None

    def created(self, headers: dict[str, str]) -> str:
        location = headers["location"]
        parts = urllib.parse.urlsplit(location)
        assert parts.scheme == "http" and parts.netloc == "tus.test" and parts.path.startswith("/files/")
        upload_id = parts.path[len("/files/"):]
        assert is_valid_upload_id(upload_id) and upload_id not in self.uploads
        return upload_id

    def settle_finals(self) -> None:
        """Finals whose partials are all complete are concatenated (at once when the last partial completes in
        this process, else when the final is next loaded): the model does it eagerly."""
        for expected in self.uploads.values():
            if expected.final and not expected.concatenated:
                parts = [self.uploads.get(p) for p in expected.parts or ()]
                if all(p is not None and p.complete for p in parts):
                    expected.data = bytearray(b"".join(bytes(p.data) for p in parts))  # type: ignore[union-attr]
                    expected.concatenated = True
                    assert len(expected.data) == expected.size

    def expect_error(self, response, status: int, code: str) -> None:
        got_status, _, body = response
        assert got_status == status and body.startswith(code.encode() + b":"), (status, code, response)

    # -- creation ---------------------------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        status, headers, _ = self.call("OPTIONS", "/files/", [])
        assert status == 200 and "creation-defer-length" in headers["tus-extension"]

    @precondition(lambda self: len(self.uploads) < MAX_UPLOADS)
    @rule(length=st.one_of(st.none(), st.integers(0, MAX_SIZE + 8)),
          metadata=st.one_of(valid_metadata, invalid_metadata),
          partial=st.booleans(),
          body=st.one_of(st.none(), bodies),
          checksum=st.sampled_from([None, "right", "wrong"]))
    def create(self, length, metadata, partial, body, checksum):
        step("create")
        headers = list(TUS)
        if length is None:
            headers.append((b"upload-defer-length", b"1"))
        else:
            headers.append((b"upload-length", str(length).encode()))
        if isinstance(metadata, bytes):
            headers.append((b"upload-metadata", metadata))
        elif metadata or length == 3:  # an empty header now and then (tuspy sends one)
            headers.append((b"upload-metadata", grammar.serialize_metadata(metadata).encode()))
        if partial:
            headers.append((b"upload-concat", b"partial"))
        if body is not None:
            headers.append(OFFSET_TYPE)
            if checksum:
                digest = sha1(body if checksum == "right" else body + b"!")
                headers.append((b"upload-checksum", b"sha1 " + digest))
        response = self.call("POST", "/files/", headers, body or b"")
        status, answer, _ = response
        # Admission's order (tusd's): the length and its limit first, then the metadata.
        if length is not None and length > MAX_SIZE:
            return self.expect_error(response, 413, "ERR_MAX_SIZE_EXCEEDED")
        if isinstance(metadata, bytes):
            return self.expect_error(response, 400, "ERR_INVALID_METADATA")
        upload_id = self.created(answer)
        expected = self.uploads[upload_id] = Expected(size=length, metadata=dict(metadata), partial=partial)
        if body is None:
            assert status == 201 and "upload-offset" not in answer
            return
        limit = (length if length is not None else MAX_SIZE)
        if len(body) > limit:
            code = "ERR_UPLOAD_SIZE_EXCEEDED" if length is not None else "ERR_MAX_SIZE_EXCEEDED"
            return self.expect_error(response, 413, code)
        if checksum == "wrong":
            return self.expect_error(response, 460, "ERR_CHECKSUM_MISMATCH")
        assert status == 201 and answer["upload-offset"] == str(len(body)), response
        expected.data += body

    @rule(case=st.sampled_from([
        ([(b"upload-length", b"-1")], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        ([(b"upload-length", b"+1")], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        ([(b"upload-length", b"1"), (b"upload-length", b"1")], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        ([(b"upload-length", b"9223372036854775808")], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        ([(b"upload-length", b"\xb9")], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        ([], 400, "ERR_INVALID_UPLOAD_LENGTH"),
        ([(b"upload-length", b"1"), (b"upload-defer-length", b"1")], 400, "ERR_AMBIGUOUS_UPLOAD_LENGTH"),
        ([(b"upload-defer-length", b"2")], 400, "ERR_INVALID_UPLOAD_LENGTH_DEFER"),
        ([(b"upload-length", b"1"), (b"upload-concat", b"partial;")], 400, "ERR_INVALID_CONCAT"),
        ([(b"upload-length", b"1"), (b"upload-concat", b"final;")], 400, "ERR_INVALID_CONCAT"),
        ([(b"upload-length", b"1"), (b"upload-metadata", b"k " + b"QUFB" * 20000)], 431, "ERR_METADATA_TOO_LARGE"),
        ([(b"upload-length", b"1"), (b"upload-metadata", b",".join(b"k%d" % i for i in range(300)))], 431,
         "ERR_METADATA_TOO_LARGE"),
        ([(b"upload-length", b"2"), OFFSET_TYPE, (b"upload-checksum", b"md4 AAAA")], 400,
         "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"),
        ([(b"upload-length", b"2"), OFFSET_TYPE, (b"upload-checksum", b"sha1 !!")], 400, "ERR_INVALID_CHECKSUM"),
    ]), tus=st.booleans())
    def create_invalid(self, case, tus):
        step("create (invalid)")
        headers, status, code = case
        response = self.call("POST", "/files/", (TUS if tus else []) + headers, b"ab" if OFFSET_TYPE in headers else b"")
        if not tus:
            return self.expect_error(response, 412, "ERR_UNSUPPORTED_VERSION")
        self.expect_error(response, status, code)

    @precondition(lambda self: len(self.uploads) < MAX_UPLOADS)
    @rule(picks=st.lists(st.integers(0, 100), min_size=1, max_size=4), bogus=st.one_of(st.none(), bogus_ids),
          absolute=st.booleans(), metadata=valid_metadata)
    def create_final(self, picks, bogus, absolute, metadata):
        step("create final")
        ids = [self.pick(i, where=lambda e, i=i: e.partial or i % 3 == 0) for i in picks]
        ids = [i for i in ids if i is not None]
        if bogus is not None or not ids:
            ids.insert(picks[0] % (len(ids) + 1), bogus if bogus is not None else "missing")
        base = "http://tus.test/files/" if absolute else "/files/"
        urls = " ".join(base + urllib.parse.quote(i, safe="/") for i in ids)
        headers = TUS + [(b"upload-concat", ("final;" + urls).encode("utf-8")),
                         (b"upload-metadata", grammar.serialize_metadata(metadata).encode())]
        response = self.call("POST", "/files/", headers)
        for i in ids:  # the partials are checked in order: the first problem is the answer
            expected = self.uploads.get(i)
            if expected is None:
                return self.expect_error(response, 404, "ERR_UPLOAD_NOT_FOUND")
            if not expected.partial:
                return self.expect_error(response, 400, "ERR_INVALID_CONCAT")
            if expected.size is None:
                return self.expect_error(response, 400, "ERR_UPLOAD_NOT_FINISHED")
        size = sum(self.uploads[i].size or 0 for i in ids)
        if size > MAX_SIZE:
            return self.expect_error(response, 413, "ERR_MAX_SIZE_EXCEEDED")
        status, answer, _ = response
        assert status == 201, response
        final_id = self.created(answer)
        self.uploads[final_id] = Expected(size=size, metadata=dict(metadata), parts=ids)
        self.settle_finals()

    # -- PATCH ------------------------------------------------------------------------------------------------------

    @rule(index=st.integers(0, 100), body=bodies,
          offset=st.sampled_from(["right"] * 6 + ["behind", "ahead", "malformed", "twice"]),
          content_type=st.sampled_from([b"application/offset+octet-stream"] * 8 + [b"text/plain", None]),
          send_length=st.booleans(),
          checksum=st.sampled_from([None, None, "right", "wrong", "malformed", "unsupported"]),
          declare=st.one_of(st.none(), st.none(), st.integers(0, MAX_SIZE + 8), st.just("bad")))
    def patch(self, index, body, offset, content_type, send_length, checksum, declare):
        step("patch")
        upload_id = self.pick(index)
        if upload_id is None:
            return
        expected = self.uploads[upload_id]
        current = expected.offset if not (expected.final and not expected.concatenated) else 0
        headers = list(TUS)
        if content_type is not None:
            headers.append((b"content-type", content_type))
        sent_offset = {"right": current, "behind": current - 1, "ahead": current + 1}.get(offset)
        if offset == "malformed":
            headers.append((b"upload-offset", b"-0"))
        elif offset == "twice":
            headers += [(b"upload-offset", str(current).encode())] * 2
        else:
            headers.append((b"upload-offset", str(sent_offset).encode()))
        if checksum == "right":
            headers.append((b"upload-checksum", b"sha1 " + sha1(body)))
        elif checksum == "wrong":
            headers.append((b"upload-checksum", b"sha1 " + sha1(body + b"?")))
        elif checksum == "malformed":
            headers.append((b"upload-checksum", b"sha1"))
        elif checksum == "unsupported":
            headers.append((b"upload-checksum", b"whirlpool AAAA"))
        if declare is not None:
            headers.append((b"upload-length", b"x1" if declare == "bad" else str(declare).encode()))
        response = self.call("PATCH", self.path(upload_id), headers, body, send_length)
        status, answer, _ = response

        if content_type != b"application/offset+octet-stream":
            return self.expect_error(response, 400, "ERR_INVALID_CONTENT_TYPE")
        if offset in ("malformed", "twice") or sent_offset is not None and sent_offset < 0:
            return self.expect_error(response, 400, "ERR_INVALID_OFFSET")
        if checksum == "malformed":
            return self.expect_error(response, 400, "ERR_INVALID_CHECKSUM")
        if checksum == "unsupported":
            return self.expect_error(response, 400, "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM")
        if expected.final:
            return self.expect_error(response, 403, "ERR_MODIFY_FINAL")
        if sent_offset != current:
            self.expect_error(response, 409, "ERR_MISMATCHED_OFFSET")
            assert answer["upload-offset"] == str(current)
            return
        if expected.complete:  # answered at once, the body is not read (tusd)
            assert status == 204 and answer["upload-offset"] == str(current), response
            return
        if declare is not None:
            if expected.size is not None or declare == "bad" or declare < current:
                return self.expect_error(response, 400, "ERR_INVALID_UPLOAD_LENGTH")
            if declare > MAX_SIZE:
                return self.expect_error(response, 413, "ERR_MAX_SIZE_EXCEEDED")
            expected.size = declare  # declared for good, whatever happens to the body
        limit = (expected.size if expected.size is not None else MAX_SIZE) - current
        if len(body) > limit:
            if send_length:  # refused before reading: nothing stored
                code = "ERR_MAX_SIZE_EXCEEDED" if expected.size is None else "ERR_UPLOAD_SIZE_EXCEEDED"
                return self.expect_error(response, 413, code)
            self.expect_error(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
            if checksum is None:  # what fitted is stored; under a checksum, nothing
                expected.data += body[:limit]
            assert answer["upload-offset"] == str(expected.offset)
            self.settle_finals()
            return
        if checksum == "wrong":
            return self.expect_error(response, 460, "ERR_CHECKSUM_MISMATCH")
        assert status == 204 and answer["upload-offset"] == str(current + len(body)), response
        expected.data += body
        self.settle_finals()

    @rule(index=st.integers(0, 100), first=bodies, second=bodies, chunk=st.integers(1, 8),
          checksums=st.booleans(), stagger=st.sampled_from([0, 0, 1, 2, 5]))
    def concurrent_patches(self, index, first, second, chunk, checksums, stagger):
        """Two PATCHes of one upload at the same offset, at once: the later one takes the lock over (the earlier
        stores what it received and answers ERR_UPLOAD_INTERRUPTED), so at most one body lands, maybe cut short
        (never under a checksum), and the stored bytes and offset say which."""
        step("concurrent patches")
        upload_id = self.pick(index, where=lambda e: not e.final and not e.complete)
        if upload_id is None:
            return
        expected = self.uploads[upload_id]
        current = expected.offset
        limit = (expected.size if expected.size is not None else MAX_SIZE) - current
        first, second = first[:limit], second[:limit]

        async def request(body: bytes, delay: float):
            await asyncio.sleep(delay)  # the second one starts before, while or after the first reads its body
            headers = TUS + [OFFSET_TYPE, (b"upload-offset", str(current).encode())]
            if checksums:
                headers.append((b"upload-checksum", b"sha1 " + sha1(body)))
            chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
            return await asgi_call(self.runner.app, "PATCH", self.path(upload_id), headers, chunks,
                                   chunk_delay=0.0005)

        async def both():
            return await asyncio.gather(request(first, 0), request(second, stagger / 1000))

        COUNTS["= requests sent"] += 2
        answers = self.runner.run(both())
        status, head, _ = self.call("HEAD", self.path(upload_id), TUS)
        assert status == 200
        stored = int(head["upload-offset"]) - current
        _, _, content = self.call("GET", self.path(upload_id), [])
        assert content[:current] == expected.data
        landed = content[current:]
        assert len(landed) == stored
        candidates = []
        COUNTS[f"= concurrent PATCH pairs: {'-'.join(str(a[0]) for a in answers)}"] += 1
        for body, (code, answer, text) in zip((first, second), answers):
            assert code in (204, 400, 409), (code, text)
            if code == 204:  # all of it stored (an empty body leaves the offset to the other one)
                assert answer["upload-offset"] == str(current + len(body)) and (landed == body or not body)
            elif code == 400:
                assert text.startswith(b"ERR_UPLOAD_INTERRUPTED")
            else:
                assert text.startswith(b"ERR_MISMATCHED_OFFSET")
            if landed == body[: len(landed)] and (not checksums or len(landed) in (0, len(body))):
                candidates.append(body)
        assert candidates, (first, second, landed, answers)
        expected.data += landed
        self.settle_finals()

    @rule(index=st.integers(0, 100), body=bodies)
    def patch_racing_delete(self, index, body):
        """A PATCH and a DELETE of one upload at once: the DELETE wins (it takes the lock over), the PATCH ends
        with a tus error or before the DELETE began; the upload is gone either way."""
        step("patch racing delete")
        upload_id = self.pick(index, where=lambda e: not e.final and not e.complete)
        if upload_id is None or self.awaited(upload_id):
            return
        expected = self.uploads[upload_id]
        headers = TUS + [OFFSET_TYPE, (b"upload-offset", str(expected.offset).encode())]
        body = body[: (expected.size if expected.size is not None else MAX_SIZE) - expected.offset]
        chunks = [body[i:i + 3] for i in range(0, len(body), 3)] or [b""]

        async def both():
            return await asyncio.gather(
                asgi_call(self.runner.app, "PATCH", self.path(upload_id), headers, chunks),
                asgi_call(self.runner.app, "DELETE", self.path(upload_id), TUS),
            )

        COUNTS["= requests sent"] += 2
        (patch_status, _, patch_body), (delete_status, _, delete_body) = self.runner.run(both())
        assert delete_status == 204, delete_body
        assert patch_status in (204, 400, 404), patch_body
        if patch_status == 400:
            assert patch_body.startswith(b"ERR_UPLOAD_INTERRUPTED")
        self.forget(upload_id)
        self.expect_error(self.call("GET", self.path(upload_id), []), 404, "ERR_UPLOAD_NOT_FOUND")

    @rule(index=st.integers(0, 100))
    def complete_partials_at_once(self, index):
        """Every unfinished partial of a waiting final gets its last bytes at the same moment: the final is
        concatenated exactly once, in order."""
        step("partials completing at once")
        final_id = self.pick(index, where=lambda e: e.final and not e.concatenated)
        if final_id is None:
            return
        parts = self.uploads[final_id].parts or []
        if any(p not in self.uploads for p in parts):
            return
        todo = sorted({p for p in parts if not self.uploads[p].complete})
        fill = {p: bytes([65 + n % 26]) * ((self.uploads[p].size or 0) - self.uploads[p].offset)
                for n, p in enumerate(todo)}

        async def all_at_once():
            return await asyncio.gather(*(
                asgi_call(self.runner.app, "PATCH", self.path(p),
                          TUS + [OFFSET_TYPE, (b"upload-offset", str(self.uploads[p].offset).encode())],
                          [fill[p][:1], fill[p][1:]])
                for p in todo
            ))

        COUNTS["= requests sent"] += len(todo)
        for status, _, text in self.runner.run(all_at_once()):
            assert status == 204, text
        for p in todo:
            self.uploads[p].data += fill[p]
        self.settle_finals()
        assert self.uploads[final_id].concatenated
        self.check_get(final_id)

    # -- HEAD, GET, DELETE ------------------------------------------------------------------------------------------

    @rule(index=st.integers(0, 100))
    def head(self, index):
        step("head")
        upload_id = self.pick(index)
        if upload_id is not None:
            self.check_head(upload_id)

    def check_head(self, upload_id: str) -> None:
        expected = self.uploads[upload_id]
        status, headers, body = self.call("HEAD", self.path(upload_id), TUS)
        assert status == 200 and body == b"" and headers["cache-control"] == "no-store", (status, headers)
        if expected.final and not expected.concatenated:
            assert "upload-offset" not in headers
        else:
            assert headers["upload-offset"] == str(expected.offset)
        if expected.size is None:
            assert headers["upload-defer-length"] == "1" and "upload-length" not in headers
        else:
            assert headers["upload-length"] == str(expected.size)
        if expected.partial:
            assert headers["upload-concat"] == "partial"
        elif expected.final:
            urls = " ".join(f"http://tus.test/files/{p}" for p in expected.parts or ())
            assert headers["upload-concat"] == f"final;{urls}"
        else:
            assert "upload-concat" not in headers
        assert grammar.parse_metadata(headers.get("upload-metadata"), strict=True) == expected.metadata

    @rule(index=st.integers(0, 100), byte_range=st.one_of(st.none(), st.tuples(st.integers(0, 70),
                                                                               st.integers(0, 70))))
    def get(self, index, byte_range):
        step("get")
        upload_id = self.pick(index)
        if upload_id is not None:
            self.check_get(upload_id, byte_range)

    def check_get(self, upload_id: str, byte_range: tuple[int, int] | None = None) -> None:
        expected = self.uploads[upload_id]
        headers = [(b"range", f"bytes={byte_range[0]}-{byte_range[1]}".encode())] if byte_range else []
        status, answer, body = self.call("GET", self.path(upload_id), headers)
        data = bytes(expected.data)
        if byte_range and data and byte_range[0] >= len(data):
            self.expect_error((status, answer, body), 416, "ERR_RANGE_NOT_SATISFIABLE")
            assert answer["content-range"] == f"bytes */{len(data)}"
            return
        if byte_range and data and byte_range[1] >= byte_range[0]:
            first, last = byte_range[0], min(byte_range[1], len(data) - 1)
            assert status == 206 and body == data[first:last + 1], (status, body, data, byte_range)
            assert answer["content-range"] == f"bytes {first}-{last}/{len(data)}"
        else:
            assert status == 200 and body == data, (status, body, data)
        content_type, disposition = download_headers(expected.metadata)
        assert answer["content-type"] == content_type and answer["content-disposition"] == disposition

    @rule(index=st.integers(0, 100))
    def delete(self, index):
        step("delete")
        upload_id = self.pick(index)
        if upload_id is None:
            return
        status, _, body = self.call("DELETE", self.path(upload_id), TUS)
        assert status == 204, body
        self.forget(upload_id)

    def awaited(self, upload_id: str) -> bool:
        """Whether a final that is not concatenated yet names this upload."""
        return any(upload_id in (e.parts or ()) for e in self.uploads.values() if e.final and not e.concatenated)

    def forget(self, upload_id: str) -> None:
        del self.uploads[upload_id]
        self.gone.append(upload_id)

    @rule(upload_id=st.one_of(bogus_ids, st.integers(0, 100)),
          method=st.sampled_from(["HEAD", "GET", "DELETE", "PATCH"]))
    def bogus(self, upload_id, method):
        """Unknown, deleted and malformed IDs (``..``, NUL, backslash, too long) are 404, whatever the method."""
        step("bogus or deleted IDs")
        if isinstance(upload_id, int):
            if not self.gone:
                return
            upload_id = self.gone[upload_id % len(self.gone)]
        assert upload_id not in self.uploads
        headers = TUS + [OFFSET_TYPE, (b"upload-offset", b"0")] if method == "PATCH" else TUS
        status, _, body = self.call(method, self.path(upload_id), headers, b"x" if method == "PATCH" else b"")
        assert status == 404, (status, body)
        if method != "HEAD":
            assert body.startswith(b"ERR_UPLOAD_NOT_FOUND")

    @rule(method=st.sampled_from(["GET", "PATCH", "DELETE", "PUT"]))
    def collection(self, method):
        step("other methods")
        self.expect_error(self.call(method, "/files/", TUS), 405, "ERR_METHOD_NOT_ALLOWED")

    # -- everything, now and then ------------------------------------------------------------------------------------

    @invariant()
    def model_is_consistent(self) -> None:
        for expected in self.uploads.values():
            assert expected.size is None or len(expected.data) <= expected.size <= MAX_SIZE
            assert len(expected.data) <= MAX_SIZE

    @rule()
    def verify_everything(self) -> None:
        step("full checks")
        for upload_id in list(self.uploads):
            self.check_head(upload_id)
            self.check_get(upload_id)


TusMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


TestTusMachine = TusMachine.TestCase


def test_final_whose_partial_is_gone_can_still_be_seen_and_terminated():
    """Regression (found by the machine): once a partial of an unfinished final was terminated, every request for
    the final (HEAD, PATCH, GET, DELETE) answered 404 ERR_UPLOAD_NOT_FOUND about the partial, so the final could not
    even be terminated."""
    runner = AppRunner(max_size=MAX_SIZE)
    try:
        _, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-length", b"1"), (b"upload-concat", b"partial")])
        partial = urllib.parse.urlsplit(headers["location"]).path
        status, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-concat", b"final;" + partial.encode())])
        assert status == 201
        final = urllib.parse.urlsplit(headers["location"]).path
        assert runner.call("DELETE", partial, TUS)[0] == 204
        status, headers, _ = runner.call("HEAD", final, TUS)
        assert status == 200 and "upload-offset" not in headers and headers["upload-length"] == "1"
        status, _, body = runner.call("PATCH", final, TUS + [OFFSET_TYPE, (b"upload-offset", b"0")], b"x")
        assert status == 403 and body.startswith(b"ERR_MODIFY_FINAL")
        assert runner.call("GET", final, [])[:3:2] == (200, b"")
        assert runner.call("DELETE", final, TUS)[0] == 204
        assert runner.call("HEAD", final, TUS)[0] == 404
    finally:
        runner.close()


def test_a_request_that_stored_its_whole_body_is_not_answered_interrupted():
    """Regression (found with a locker that yields): two partials completing at once both lock their final; the
    second asked the first to let go, and the first, whose whole body was stored and whose upload was complete,
    answered 400 ERR_UPLOAD_INTERRUPTED (a client gives up on that)."""
    runner = AppRunner(max_size=MAX_SIZE, locker=YieldingLocker())
    try:
        partials = []
        for _ in range(2):
            _, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-length", b"2"),
                                                                  (b"upload-concat", b"partial")])
            partials.append(urllib.parse.urlsplit(headers["location"]).path)
        _, headers, _ = runner.call("POST", "/files/", TUS + [(b"upload-concat", ("final;" + " ".join(partials)).encode())])
        final = urllib.parse.urlsplit(headers["location"]).path

        async def both():
            return await asyncio.gather(*(
                asgi_call(runner.app, "PATCH", p, TUS + [OFFSET_TYPE, (b"upload-offset", b"0")], [b"a", b"b"])
                for p in partials
            ))

        assert [(status, headers["upload-offset"]) for status, headers, _ in runner.run(both())] == [(204, "2")] * 2
        assert runner.call("GET", final, [])[2] == b"abab"
    finally:
        runner.close()
