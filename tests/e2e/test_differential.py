"""pytusd and tusd side by side: the same requests to both, the same answers back.

A tusd process (tusd itself, built by ``scripts/install-tusd``) and a ``pytusd`` process start with the same flags
on the same kind of storage (a folder; an S3 bucket on Ceph RADOS Gateway). Every case below sends the same
request sequence to each, and each answer is reduced to what a tus client sees (:func:`answer`): the status, the
``ERR_`` code of an error body, the tus headers, whether there is a ``Location``, the body's digest for downloads.
Upload IDs differ between the servers, so each is replaced by its position in the sequence (``<0>``, ``<1>``).

Where pytusd answers differently on purpose, README's table "Where pytusd answers differently from tusd" lists the
case and the field once, with the reason; :func:`documented_differences` reads that table, and a difference that is
not in it fails, as does a row that no longer differs. Random sequences from hypothesis (and concurrent batches of
them) must agree everywhere: they are drawn only from requests outside the table. The hook JSON each server sends
for the same cases goes to one recorder and is compared as well (keys, types, the upload's fields and the request),
in the cases whose answers agree.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import pathlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.services import S3_ACCESS_KEY, S3_SECRET_KEY, tusd_binary

from .conftest import PytusdProcess

pytestmark = pytest.mark.e2e

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
TUS = {"Tus-Resumable": "1.0.0"}
PATCH_TYPE = "application/offset+octet-stream"
# What a client sees of an answer, besides status and error code.
TUS_HEADERS = (
    "tus-resumable", "tus-version", "tus-extension", "tus-max-size", "tus-checksum-algorithm", "upload-offset",
    "upload-length", "upload-defer-length", "upload-metadata", "upload-concat", "cache-control",
    "access-control-allow-origin", "access-control-allow-methods", "access-control-allow-headers",
    "access-control-expose-headers", "access-control-max-age", "access-control-allow-credentials", "allow",
    "upload-complete", "upload-incomplete", "upload-draft-interop-version",
)
# The same flags for both: tusd's names. -max-size keeps the size rule testable without big bodies.
FLAGS = ("-base-path", "/files/", "-max-size", "1000", "-enable-experimental-protocol",
         "-cors-allow-origin", r"^https://app\.example$")
HOOK_EVENTS = "pre-create,post-create,pre-finish,post-finish,post-terminate"


# -- the servers ------------------------------------------------------------------------------------------------------


class HookRecorder:
    """One HTTP hook receiver for both servers: each posts to its own path, every hook answers ``{}``."""

    def __init__(self) -> None:
        import http.server

        self.received: dict[str, list[dict[str, Any]]] = {"tusd": [], "pytusd": []}
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.received[self.path.strip("/")].append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, name: str) -> list[dict[str, Any]]:
        """The hooks ``name`` sent so far, once none arrived for a moment (post-hooks are sent asynchronously)."""
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 0.3:
            with self.lock:
                count = len(self.received[name])
            if count != last:
                last, quiet_since = count, time.monotonic()
            time.sleep(0.02)
        with self.lock:
            taken, self.received[name] = self.received[name], []
        return taken

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Pair:
    """tusd and pytusd, started with the same flags on the same kind of storage."""

    def __init__(self, tmp: pathlib.Path, store: str, storage: Callable[[str], list[str]], env: dict[str, str]) -> None:
        self.store = store  # "file" or "s3": which rows of README's table apply
        self.hooks = HookRecorder()
        self.hook_types_seen: set[str] = set()
        self.servers: dict[str, PytusdProcess] = {}
        for name, command in (("tusd", (str(tusd_binary()),)), ("pytusd", None)):
            flags = [*FLAGS, *storage(name), "-hooks-http", f"{self.hooks.url}/{name}",
                     "-hooks-enabled-events", HOOK_EVENTS]
            folder = tmp / name
            folder.mkdir()
            self.servers[name] = PytusdProcess(folder / "data", *flags, env=env, command=command).start()

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.hooks.close()


def _file_storage(name: str) -> list[str]:
    return []  # -upload-dir, set by PytusdProcess for either


@pytest.fixture(scope="module", params=["file", "s3"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    env: dict[str, str] = {}
    storage = _file_storage
    if request.param == "s3":
        import boto3

        endpoint = request.getfixturevalue("s3_endpoint")
        env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
               "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                              aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")
        buckets = {name: f"diff-{name}-{uuid.uuid4().hex[:8]}" for name in ("tusd", "pytusd")}
        for bucket in buckets.values():
            client.create_bucket(Bucket=bucket)

        def storage(name: str) -> list[str]:
            return ["-s3-bucket", buckets[name], "-s3-endpoint", endpoint]

    pair = Pair(tmp_path_factory.mktemp(f"differential-{request.param}"), request.param, storage, env)
    yield pair
    pair.close()


# -- what a client sees ---------------------------------------------------------------------------------------------


class Session:
    """One server's side of a case: its requests, and their answers with upload IDs replaced by positions."""

    def __init__(self, base: str, ids: list[str] | None = None) -> None:
        self.base = base
        self.client = httpx.Client(base_url=self.base, timeout=30)
        self.ids: list[str] = [] if ids is None else ids
        self.answers: list[tuple[str, dict[str, Any]]] = []

    def sibling(self) -> Session:
        """Another connection to the same server that knows the same uploads (for requests sent at once)."""
        return Session(self.base, self.ids)

    def url(self, index: int | str) -> str:
        """The path of the upload created ``index``-th in this case (or of a name that never existed)."""
        if isinstance(index, str):
            return f"/files/{index}"
        return f"/files/{self.ids[index]}" if index < len(self.ids) else "/files/0123456789abcdef0123456789abcdef"

    def request(self, label: str, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> httpx.Response:
        response = self.client.request(method, path, headers=headers or {}, content=body)
        location = response.headers.get("location")
        if location and response.status_code == 201:
            self.ids.append(location.rstrip("/").rsplit("/", 1)[1])
        self.answers.append((label, self.answer(response)))
        return response

    def answer(self, response: httpx.Response) -> dict[str, Any]:
        seen: dict[str, Any] = {"status": response.status_code}
        if response.status_code >= 400:
            match = re.match(rb"(ERR_[A-Z_]+)", response.content)
            seen["error"] = match.group(1).decode() if match else None
        for name in TUS_HEADERS:
            value = response.headers.get(name)
            if value is not None:
                seen[name] = self.normalised(name, value)
        seen["location"] = "location" in response.headers
        seen["upload-expires"] = "upload-expires" in response.headers
        if response.request.method == "GET" and response.status_code == 200:
            seen["body"] = hashlib.sha256(response.content).hexdigest()[:16]
        return seen

    def normalised(self, name: str, value: str) -> str:
        value = value.replace(self.base, "")  # absolute upload URLs (Upload-Concat of a final)
        for position, upload_id in enumerate(self.ids):
            value = value.replace(upload_id, f"<{position}>")
        if name in ("upload-metadata", "tus-extension", "allow") or name.startswith("access-control-"):
            # Lists whose order carries no meaning (tusd writes metadata from a Go map: any order).
            value = ",".join(sorted(part.strip() for part in value.split(",")))
        return value

    def close(self) -> None:
        self.client.close()


def run_case(pair: Pair, case: Callable[[Session], None]) -> dict[str, Session]:
    sessions = {}
    for name, server in pair.servers.items():
        session = sessions[name] = Session(f"http://127.0.0.1:{server.port}")
        try:
            case(session)
        finally:
            session.close()
    return sessions


def differences(sessions: dict[str, Session]) -> set[tuple[str, str]]:
    """(label, field) for every field in which pytusd's answer is not tusd's."""
    tusd, pytusd = sessions["tusd"].answers, sessions["pytusd"].answers
    assert [label for label, _ in tusd] == [label for label, _ in pytusd], "the case took different paths"
    found = set()
    for (label, theirs), (_, ours) in zip(tusd, pytusd, strict=True):
        for field in theirs.keys() | ours.keys():
            if theirs.get(field) != ours.get(field):
                found.add((label, field))
    return found


def describe(sessions: dict[str, Session], wanted: set[tuple[str, str]]) -> str:
    lines = []
    for (label, theirs), (_, ours) in zip(sessions["tusd"].answers, sessions["pytusd"].answers, strict=True):
        for field in sorted(theirs.keys() | ours.keys()):
            if (label, field) in wanted:
                lines.append(f"{label} {field}: tusd {theirs.get(field)!r}, pytusd {ours.get(field)!r}")
    return "\n".join(lines)


def documented_differences() -> dict[str, set[tuple[str, str]]]:
    """README's table: store ("all", "file", "s3") -> {(case label, field)}. A row's first three cells name the
    labels, the stores and the fields, each as a list of `code` spans. Under "sometimes" go the rows whose tusd
    cell begins with "sometimes": tusd's answer varies from run to run, so such a row is not stale when it agrees."""
    text = README.read_text()
    section = text.split("### Where pytusd answers differently from tusd", 1)[1].split("\n#", 1)[0]
    table: dict[str, set[tuple[str, str]]] = {"all": set(), "file": set(), "s3": set(), "sometimes": set()}
    for line in section.splitlines():
        cells = line.split("|")[1:5]
        if len(cells) < 4 or not cells[0].strip().startswith("`"):
            continue
        labels, stores, fields = (re.findall(r"`([\w-]+)`", cell) for cell in cells[:3])
        rows = {(label, field) for label in labels for field in fields}
        for store in stores:
            table[store] |= rows
        if cells[3].strip().startswith("sometimes"):
            table["sometimes"] |= rows
    assert table["all"], "README's table of differences was not found"
    return table


def allowed(store: str) -> set[tuple[str, str]]:
    table = documented_differences()
    return table["all"] | table[store]


# -- the cases: every tus rule, one label per request -------------------------------------------------------------


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def create(s: Session, label: str = "create", length: int | None = 11, **headers: str) -> httpx.Response:
    sizes = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    return s.request(label, "POST", "/files/", {**TUS, **sizes, **headers})


def patch(s: Session, label: str, index: int, offset: int | str, body: bytes, **headers: str) -> httpx.Response:
    sent = {**TUS, "Upload-Offset": str(offset), "Content-Type": PATCH_TYPE, **headers}
    return s.request(label, "PATCH", s.url(index), sent, body)


def case_discovery(s: Session) -> None:
    s.request("options", "OPTIONS", "/files/", {})
    s.request("options-with-tus-resumable", "OPTIONS", "/files/", TUS)
    s.request("options-of-upload", "OPTIONS", "/files/abc", {})


def case_creation(s: Session) -> None:
    create(s)
    s.request("head-new", "HEAD", s.url(0), TUS)
    create(s, "create-empty", 0)
    s.request("head-empty", "HEAD", s.url(1), TUS)
    create(s, "create-with-metadata", 5, **{"Upload-Metadata": meta(filename="a.txt", filetype="text/plain")})
    s.request("head-with-metadata", "HEAD", s.url(2), TUS)
    create(s, "create-metadata-key-only", 5, **{"Upload-Metadata": "is_confidential"})
    s.request("head-metadata-key-only", "HEAD", s.url(3), TUS)


def case_creation_refused(s: Session) -> None:
    s.request("create-no-length", "POST", "/files/", TUS)
    create(s, "create-negative-length", -1)
    s.request("create-text-length", "POST", "/files/", {**TUS, "Upload-Length": "eleven"})
    s.request("create-length-and-defer", "POST", "/files/", {**TUS, "Upload-Length": "5", "Upload-Defer-Length": "1"})
    s.request("create-defer-not-1", "POST", "/files/", {**TUS, "Upload-Defer-Length": "2"})
    s.request("create-no-tus-resumable", "POST", "/files/", {"Upload-Length": "5"})
    s.request("create-wrong-tus-resumable", "POST", "/files/", {"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    create(s, "create-over-max-size", 1001)
    create(s, "create-max-size", 1000)


def case_creation_with_upload(s: Session) -> None:
    headers = {**TUS, "Upload-Length": "11", "Content-Type": PATCH_TYPE}
    s.request("create-with-upload", "POST", "/files/", headers, b"hello ")
    s.request("head-after-create-with-upload", "HEAD", s.url(0), TUS)
    s.request("create-with-whole-upload", "POST", "/files/", headers, b"hello world")
    s.request("get-after-create-with-upload", "GET", s.url(1), TUS)
    s.request("create-with-upload-past-length", "POST", "/files/", {**headers, "Upload-Length": "2"}, b"abc")


def case_patch(s: Session) -> None:
    create(s)
    patch(s, "patch", 0, 0, b"hello ")
    s.request("head-after-patch", "HEAD", s.url(0), TUS)
    patch(s, "patch-wrong-offset", 0, 0, b"again")
    patch(s, "patch-offset-ahead", 0, 9, b"xx")
    patch(s, "patch-text-offset", 0, "six", b"world")
    patch(s, "patch-negative-offset", 0, -1, b"world")
    s.request("patch-no-offset", "PATCH", s.url(0), {**TUS, "Content-Type": PATCH_TYPE}, b"world")
    patch(s, "patch-wrong-content-type", 0, 6, b"world", **{"Content-Type": "text/plain"})
    s.request("patch-no-content-type", "PATCH", s.url(0), {**TUS, "Upload-Offset": "6"}, b"world")
    patch(s, "patch-no-tus-resumable", 0, 6, b"world", **{"Tus-Resumable": ""})
    patch(s, "patch-past-length", 0, 6, b"world and more")
    patch(s, "patch-rest", 0, 6, b"world")
    s.request("head-complete", "HEAD", s.url(0), TUS)
    patch(s, "patch-complete-upload", 0, 11, b"x")
    patch(s, "patch-complete-upload-empty", 0, 11, b"")
    patch(s, "patch-missing-upload", 5, 0, b"x")
    s.request("get", "GET", s.url(0), TUS)


def case_defer_length(s: Session) -> None:
    create(s, "create-deferred", None)
    s.request("head-deferred", "HEAD", s.url(0), TUS)
    patch(s, "patch-deferred", 0, 0, b"abc")
    patch(s, "patch-declares-length", 0, 3, b"de", **{"Upload-Length": "5"})
    s.request("head-declared", "HEAD", s.url(0), TUS)
    create(s, "create-deferred", None)
    patch(s, "patch-declares-length-again", 1, 0, b"a", **{"Upload-Length": "3"})
    patch(s, "patch-redeclares-length", 1, 1, b"b", **{"Upload-Length": "4"})


def case_termination(s: Session) -> None:
    create(s)
    s.request("delete", "DELETE", s.url(0), TUS)
    s.request("head-deleted", "HEAD", s.url(0), TUS)
    s.request("delete-deleted", "DELETE", s.url(0), TUS)
    s.request("delete-no-tus-resumable", "DELETE", s.url(3), {})


def case_downloads(s: Session) -> None:
    create(s, length=5)
    patch(s, "patch", 0, 0, b"abc")
    s.request("get-unfinished", "GET", s.url(0), TUS)
    patch(s, "patch-rest", 0, 3, b"de")
    s.request("get", "GET", s.url(0), {})
    s.request("get-missing", "GET", s.url(4), {})
    create(s, "create-empty", 0)
    s.request("get-empty", "GET", s.url(1), {})
    create(s, length=4)
    s.request("get-nothing-yet", "GET", s.url(2), {})
    s.request("head-missing", "HEAD", s.url(4), TUS)


def case_concatenation(s: Session) -> None:
    create(s, "create-partial", 3, **{"Upload-Concat": "partial"})
    create(s, "create-partial", 2, **{"Upload-Concat": "partial"})
    patch(s, "patch-partial", 0, 0, b"abc")
    s.request("head-partial", "HEAD", s.url(0), TUS)
    patch(s, "patch-partial", 1, 0, b"de")
    s.request("create-final", "POST", "/files/", {**TUS, "Upload-Concat": f"final;{s.url(0)} {s.url(1)}"})
    s.request("head-final", "HEAD", s.url(2), TUS)
    s.request("get-final", "GET", s.url(2), TUS)
    patch(s, "patch-final", 2, 5, b"x")
    s.request("create-final-of-missing", "POST", "/files/", {**TUS, "Upload-Concat": "final;/files/nope"})
    s.request("create-final-bad-header", "POST", "/files/", {**TUS, "Upload-Concat": "final"})
    s.request("create-concat-unknown", "POST", "/files/", {**TUS, "Upload-Length": "1", "Upload-Concat": "odd"})


def case_concatenation_of_unfinished(s: Session) -> None:
    create(s, "create-partial", 3, **{"Upload-Concat": "partial"})
    s.request("create-final-of-unfinished", "POST", "/files/", {**TUS, "Upload-Concat": f"final;{s.url(0)}"})


def case_concatenation_of_regular(s: Session) -> None:
    create(s, "create-regular", 1)
    patch(s, "patch-regular", 0, 0, b"z")
    s.request("create-final-of-regular", "POST", "/files/", {**TUS, "Upload-Concat": f"final;{s.url(0)}"})


def case_draft(s: Session) -> None:
    """The IETF resumable-upload draft, at the interop versions both implement."""
    for version in ("5", "6"):
        draft = {"Upload-Draft-Interop-Version": version}
        done = "Upload-Complete"  # the field of interop versions 4 and later
        at = len(s.ids)
        s.request(f"draft-{version}-create", "POST", "/files/", {**draft, done: "?0"}, b"abc")
        s.request(f"draft-{version}-head", "HEAD", s.url(at), draft)
        s.request(f"draft-{version}-append", "PATCH", s.url(at), {**draft, "Upload-Offset": "3", done: "?1"}, b"de")
        s.request(f"draft-{version}-head-complete", "HEAD", s.url(at), draft)
        wrong = {**draft, "Upload-Offset": "1", done: "?1"}
        s.request(f"draft-{version}-append-wrong-offset", "PATCH", s.url(at), wrong, b"x")
        s.request(f"draft-{version}-create-complete", "POST", "/files/", {**draft, done: "?1"}, b"whole")
        s.request(f"draft-{version}-get", "GET", s.url(at + 1), {})
        s.request(f"draft-{version}-delete", "DELETE", s.url(at), draft)


def case_methods_and_paths(s: Session) -> None:
    s.request("put-collection", "PUT", "/files/", TUS)
    s.request("get-collection", "GET", "/files/", TUS)
    create(s)
    s.request("put-upload", "PUT", s.url(0), TUS)
    s.request("post-upload", "POST", s.url(0), TUS)
    s.request("override-patch", "POST", s.url(0),
              {**TUS, "X-HTTP-Method-Override": "PATCH", "Upload-Offset": "0", "Content-Type": PATCH_TYPE}, b"hi")
    s.request("head-after-override", "HEAD", s.url(0), TUS)
    s.request("outside-base-path", "GET", "/elsewhere", TUS)


def case_cors(s: Session) -> None:
    origin = {"Origin": "https://app.example"}
    s.request("preflight", "OPTIONS", "/files/",
              {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Upload-Length"})
    create(s, "create-cors", 5, **origin)
    s.request("head-cors", "HEAD", s.url(0), {**TUS, **origin})
    s.request("origin-refused", "OPTIONS", "/files/", {**TUS, "Origin": "https://elsewhere.example"})
    s.request("origin-refused", "POST", "/files/", {**TUS, "Upload-Length": "1", "Origin": "https://elsewhere.example"})


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


# -- hooks ----------------------------------------------------------------------------------------------------------

MAPS = {"Header", "MetaData", "Storage"}  # objects whose keys are data (or store-specific), not the hook's schema


def shape(value: Any) -> Any:
    """The JSON's schema: keys and value types, maps reduced to their type."""
    if isinstance(value, dict):
        return {key: "map" if key in MAPS else shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def hook_view(hook: dict[str, Any], session: Session) -> dict[str, Any]:
    """What a hook says of the upload and the request, upload IDs as positions."""
    def position(upload_id: str) -> str:
        return f"<{session.ids.index(upload_id)}>" if upload_id in session.ids else upload_id

    event = hook.get("Event", {})
    upload, request = event.get("Upload", {}), event.get("HTTPRequest", {})
    return {
        "shape": shape(hook),
        "upload": {key: upload.get(key) for key in ("Size", "SizeIsDeferred", "Offset", "MetaData", "IsPartial",
                                                     "IsFinal")},
        "id": position(upload.get("ID", "")),
        "partials": [position(i) for i in upload.get("PartialUploads") or []],
        "storage": sorted((upload.get("Storage") or {}).keys()),
        "storage-type": (upload.get("Storage") or {}).get("Type"),
        "request": [request.get("Method"), session.normalised("", request.get("URI", ""))],
    }


def hook_differences(pair: Pair, sessions: dict[str, Session]) -> tuple[set[tuple[str, str]], list[str]]:
    """(hook-<type>, field) where the hooks of one type differ, compared as sorted lists (post hooks are async)."""
    views: dict[str, dict[str, list[str]]] = {}
    for name, session in sessions.items():
        by_type: dict[str, list[str]] = {}
        for hook in pair.hooks.take(name):
            by_type.setdefault(hook.get("Type", "?"), []).append(json.dumps(hook_view(hook, session), sort_keys=True))
        views[name] = {kind: sorted(items) for kind, items in by_type.items()}
    found, text = set(), []
    pair.hook_types_seen |= views["tusd"].keys()
    for kind in views["tusd"].keys() | views["pytusd"].keys():
        theirs, ours = views["tusd"].get(kind, []), views["pytusd"].get(kind, [])
        if len(theirs) != len(ours):
            found.add((f"hook-{kind}", "count"))
            text.append(f"hook-{kind} count: tusd {len(theirs)}, pytusd {len(ours)}")
            continue
        for a, b in zip(theirs, ours, strict=True):
            mine, other = json.loads(b), json.loads(a)
            for field in other.keys() | mine.keys():
                if other.get(field) != mine.get(field):
                    found.add((f"hook-{kind}", field))
                    text.append(f"hook-{kind} {field}: tusd {other.get(field)!r}, pytusd {mine.get(field)!r}")
    return found, text


def test_same_answers_as_tusd(pair: Pair) -> None:
    """Every case: pytusd's answers are tusd's, except where README's table says why not (and only there)."""
    expected = allowed(pair.store)
    found: set[tuple[str, str]] = set()
    undocumented = []
    for case in CASES:
        sessions = run_case(pair, case)
        # The comparison means something only while tusd itself is healthy.
        assert all(seen["status"] < 500 for _, seen in sessions["tusd"].answers), sessions["tusd"].answers
        diff = differences(sessions)
        hooks, hooks_text = hook_differences(pair, sessions)
        if diff:  # the hooks follow from answers that differ (another upload created, or none): not compared
            hooks, hooks_text = set(), []
        found |= diff | hooks
        if (diff | hooks) - expected:
            text = describe(sessions, diff - expected).splitlines()
            text += [line for line in hooks_text if tuple(line.split(":")[0].split(" ", 1)) not in expected]
            undocumented.append(f"{case.__name__}:\n" + "\n".join(text))
    assert not undocumented, "differences from tusd that README's table does not list:\n" + "\n".join(undocumented)
    assert pair.hook_types_seen == set(HOOK_EVENTS.split(",")), "every hook was compared at least once"
    stale = expected - found - documented_differences()["sometimes"]
    assert not stale, f"README's table lists differences that are gone on {pair.store}: {sorted(stale)}"


# -- random sequences -----------------------------------------------------------------------------------------------

UPLOADS = 4  # operations name uploads by position; past the created ones they name an upload that never existed

create_op = st.tuples(st.just("create"), st.sampled_from([0, 1, 5, None]), st.booleans(),
                      st.sampled_from([b"", b"ab", b"abcdef"]))
patch_op = st.tuples(st.just("patch"), st.integers(0, UPLOADS - 1), st.sampled_from(["at", "behind", "ahead"]),
                     st.sampled_from([b"", b"a", b"abc", b"abcdefgh"]), st.booleans())
other_op = st.tuples(st.sampled_from(["head", "get", "delete", "declare"]), st.integers(0, UPLOADS - 1))


class Known:
    """What one session learnt of its uploads' offsets from its own answers (so "at" means its stored offset)."""

    def __init__(self) -> None:
        self.offsets: dict[int, int] = {}
        self.lengths: dict[int, int | None] = {}

    def learn(self, index: int, response: httpx.Response) -> None:
        offset = response.headers.get("upload-offset")
        if response.status_code < 300 and offset is not None and offset.isdigit():
            self.offsets[index] = int(offset)


def run_op(s: Session, known: Known, op: tuple[Any, ...]) -> None:
    """One operation, labelled by the rule it exercises (the labels of the hand-written cases)."""
    kind = op[0]
    if kind == "create":
        _, length, with_meta, body = op
        headers = {**TUS, **({"Upload-Metadata": meta(name="x")} if with_meta else {})}
        headers.update({"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"})
        if body:
            headers["Content-Type"] = PATCH_TYPE
        label = "create-with-upload" if body else "create" if length is not None else "create-deferred"
        if body and length is not None and len(body) > length:
            label = "create-with-upload-past-length"
        before = len(s.ids)
        response = s.request(label, "POST", "/files/", headers, body)
        if len(s.ids) > before:  # created: at offset 0 unless creation-with-upload said more
            known.offsets[before] = 0
            known.lengths[before] = length
            known.learn(before, response)
        return
    index = op[1]
    if kind == "patch":
        _, _, where, body, right_type = op
        stored = known.offsets.get(index, 0)
        offset = {"at": stored, "behind": stored - 1, "ahead": stored + 1}[where]
        if offset < 0:
            offset, where = stored, "at"
        label = {"at": "patch", "behind": "patch-wrong-offset", "ahead": "patch-offset-ahead"}[where]
        if not right_type:
            label = "patch-wrong-content-type"
        headers = {"Content-Type": PATCH_TYPE if right_type else "text/plain"}
        known.learn(index, patch(s, label, index, offset, body, **headers))
    elif kind == "declare":
        stored = known.offsets.get(index, 0)
        known.learn(index, patch(s, "patch-declares-length", index, stored, b"", **{"Upload-Length": str(stored + 2)}))
    elif kind == "head":
        known.learn(index, s.request("head", "HEAD", s.url(index), TUS))
    elif kind == "get":
        label = "get"
        if known.offsets.get(index) == 0:  # the hand-written cases' labels for these rules
            label = "get-empty" if known.lengths.get(index) == 0 else "get-nothing-yet"
        s.request(label, "GET", s.url(index), TUS)
    else:
        s.request("delete", "DELETE", s.url(index), TUS)


def compare(pair: Pair, case: Callable[[Session], None]) -> None:
    sessions = run_case(pair, case)
    undocumented = differences(sessions) - allowed(pair.store)
    assert not undocumented, describe(sessions, undocumented)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(create_op, create_op, patch_op, patch_op, other_op), min_size=1, max_size=12))
def test_random_sequences_answer_as_tusd(pair: Pair, ops: list[tuple[Any, ...]]) -> None:
    """Any sequence of creations, appends (at, behind and ahead of the offset), declarations, reads and deletions."""
    def case(s: Session) -> None:
        known = Known()
        for op in ops:
            run_op(s, known, op)

    compare(pair, case)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.one_of(patch_op, other_op), min_size=2, max_size=UPLOADS, unique_by=lambda op: op[1]))
def test_concurrent_requests_answer_as_tusd(pair: Pair, batch: list[tuple[Any, ...]]) -> None:
    """Requests to different uploads sent at once: each answers as it would alone (no request sees another's)."""
    def case(s: Session) -> None:
        known = Known()
        for _ in range(UPLOADS):
            run_op(s, known, ("create", 5, False, b""))
        sessions = [s.sibling() for _ in batch]  # one connection per request; answers kept in the batch's order
        with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
            list(pool.map(lambda args: run_op(args[0], Known(), args[1]), zip(sessions, batch, strict=True)))
        for copy in sessions:
            s.answers += copy.answers
            copy.close()

    compare(pair, case)
