"""tusd's flags for the ``pytusd`` command: their parsers, defaults, help, environment names, and Go's flag syntax.

Every flag can also come from the environment as ``PYTUSD_<NAME>`` (``--upload-dir`` is ``PYTUSD_UPLOAD_DIR``); a
flag on the command line wins. Like Go's flag package, ``-name value``, ``-name=value`` and ``--name`` all work, and
booleans take ``--flag``, ``--flag=true`` or ``--flag=false``.
"""


from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from ...fileio import FILE_IO_MODES
from ...version import __version__

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``60s``, ``1m30s``, ``500ms``) or a plain number of seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            value += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 60s, 1m30s, 500ms)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a duration cannot be negative")
    return value


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def parse_octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid octal permissions {text!r} (e.g. 0775)") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"permissions out of range: {text!r}")
    return value


def parse_log_format(text: str) -> str:
    if text not in ("text", "json"):
        raise argparse.ArgumentTypeError("log format must be text or json")
    return text


def parse_otel_exporter(text: str) -> str:
    if text not in ("", "console", "otlp"):
        raise argparse.ArgumentTypeError("trace exporter must be console or otlp")
    return text


def parse_locker(text: str) -> str:
    if text not in ("", "file", "memory", "redis"):
        raise argparse.ArgumentTypeError("locker must be file, memory or redis")
    return text


def parse_file_io(text: str) -> str:
    if text not in FILE_IO_MODES:
        raise argparse.ArgumentTypeError("file I/O must be auto, threads or inline")
    return text


def parse_non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


TLS_MODES = ("tls12", "tls13", "tls12-strong")


def parse_tls_mode(text: str) -> str:
    if text not in TLS_MODES:
        raise argparse.ArgumentTypeError("TLS mode must be tls12, tls13 or tls12-strong")
    return text


def parse_non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def parse_port(text: str) -> int:
    value = parse_non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("a port is 0-65535")
    return value


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    group: str


FLAGS = [
    # listening
    Flag("host", str, "0.0.0.0", "Host to bind the HTTP server to", "Listening"),
    Flag("port", parse_port, 8080, "Port to bind the HTTP server to", "Listening"),
    Flag("unix-sock", str, "", "Listen on this UNIX socket instead of TCP", "Listening"),
    Flag("base-path", str, "/files/", "Path (or absolute URL) under which uploads are served", "Listening"),
    Flag("behind-proxy", parse_bool, False, "Trust X-Forwarded-Host/-Proto and Forwarded for upload URLs", "Listening"),
    Flag("enable-h2c", parse_bool, False, "Also accept HTTP/2 without TLS (h2c, cleartext) next to HTTP/1.1; not "
         "with --tls-certificate", "Listening"),
    Flag("tls-certificate", str, "", "TLS certificate file (PEM, with intermediates); enables HTTPS", "Listening"),
    Flag("tls-key", str, "", "Key file for --tls-certificate", "Listening"),
    Flag("tls-mode", parse_tls_mode, "tls12", "TLS versions and ciphers, as tusd: tls12 (TLS 1.2 with ECDHE and AEAD "
         "ciphers only, and TLS 1.3), tls13 (TLS 1.3 only) or tls12-strong (TLS 1.2 only, AES-256-GCM only)",
         "Listening"),
    Flag("workers", parse_non_negative_int, 1, "Server processes sharing the port and the uploads (0: one per CPU "
         "core); needs a locker that works across processes (file, redis)", "Listening"),
    # protocol
    Flag("max-size", parse_non_negative_int, 0, "Largest upload in bytes (0: no limit)", "Protocol"),
    Flag("max-metadata-size", parse_non_negative_int, 64 * 1024,
         "Largest Upload-Metadata header in bytes; larger is 431 ERR_METADATA_TOO_LARGE (0: no limit)", "Protocol"),
    Flag("max-metadata-pairs", parse_non_negative_int, 256,
         "Most key-value pairs in Upload-Metadata; more is 431 ERR_METADATA_TOO_LARGE (0: no limit)", "Protocol"),
    Flag("max-concat-partials", parse_non_negative_int, 128,
         "Most partial uploads one final upload may name (Upload-Concat); more is 400 ERR_INVALID_CONCAT "
         "(0: no limit)", "Protocol"),
    Flag("max-header-size", parse_non_negative_int, 1024 * 1024,
         "Largest request line plus header fields in bytes, as Go's (tusd's) default; larger is 431 "
         "ERR_HEADERS_TOO_LARGE (0: the HTTP parser's own limit, none with httptools)", "Protocol"),
    Flag("disable-download", parse_bool, False, "Do not serve uploads with GET", "Protocol"),
    Flag("disable-termination", parse_bool, False, "Do not allow DELETE (termination extension)", "Protocol"),
    Flag(
        "enable-experimental-protocol",
        parse_bool,
        False,
        "Also speak the IETF resumable-upload draft (interop versions 3-8) next to tus 1.0",
        "Protocol",
    ),
    Flag("disable-concatenation", parse_bool, False, "Do not offer the concatenation extension", "Protocol"),
    Flag(
        "disable-concatenation-unfinished",
        parse_bool,
        False,
        "Require partial uploads to be finished before a final upload names them (as tusd does)",
        "Protocol",
    ),
    Flag("show-greeting", parse_bool, True, "Answer GET / with a short greeting text", "Protocol"),
    Flag(
        "upload-page",
        parse_bool,
        True,
        "Serve a browser upload page at / (the greeting still answers clients that do not ask for HTML)",
        "Protocol",
    ),
    # CORS
    Flag("disable-cors", parse_bool, False, "Send no CORS headers (e.g. a proxy handles CORS)", "CORS"),
    Flag("cors-allow-origin", str, ".*", "Regular expression the Origin header must match", "CORS"),
    Flag("cors-allow-credentials", parse_bool, False, "Send Access-Control-Allow-Credentials: true", "CORS"),
    Flag("cors-allow-methods", str, "", "Methods allowed in addition to the ones tus needs (comma-separated)", "CORS"),
    Flag("cors-allow-headers", str, "", "Headers allowed in addition to the ones tus needs (comma-separated)", "CORS"),
    Flag("cors-expose-headers", str, "", "Headers exposed in addition to the ones tus needs (comma-separated)", "CORS"),
    Flag("cors-max-age", str, "86400", "Access-Control-Max-Age of preflight responses (seconds)", "CORS"),
    Flag(
        "expiration",
        parse_duration,
        0.0,
        "Remove unfinished uploads this long after their last change, e.g. 24h (0: never)",
        "Protocol",
    ),
    Flag(
        "digest",
        str,
        "",
        "Compute each upload's digest of its whole content while it arrives, sent as Repr-Digest: sha256, sha512 or "
        "both (comma-separated)",
        "Protocol",
    ),
    Flag(
        "expiration-cleanup-interval",
        parse_duration,
        60.0,
        "How often the background cleaner looks for expired uploads",
        "Protocol",
    ),
    # hooks
    Flag("hooks-dir", str, "", "Directory of hook scripts named after their event (pre-create, post-finish, ...)", "Hooks"),
    Flag(
        "hooks-enabled-events",
        str,
        "pre-create,post-create,post-receive,post-terminate,post-finish",
        "Comma-separated hook events to run (also: pre-finish, pre-terminate)",
        "Hooks",
    ),
    Flag("hooks-dir-events", str, "", "Events for the file hooks (default: --hooks-enabled-events)", "Hooks"),
    Flag("hooks-http-events", str, "", "Events for the HTTP hook (default: --hooks-enabled-events)", "Hooks"),
    Flag("hooks-python-events", str, "", "Events for the Python hook (default: --hooks-enabled-events)", "Hooks"),
    Flag("hooks-file-timeout", parse_duration, 0.0, "Kill a hook script running longer than this (0: no limit)", "Hooks"),
    Flag("hooks-http", str, "", "URL to POST hook events to", "Hooks"),
    Flag("hooks-http-forward-headers", str, "", "Request headers passed on to the HTTP hook (comma-separated)", "Hooks"),
    Flag("hooks-http-retry", parse_non_negative_int, 3, "Retries of an HTTP hook on network errors and 5xx", "Hooks"),
    Flag("hooks-http-backoff", parse_duration, 1.0, "Pause between HTTP hook retries", "Hooks"),
    Flag("hooks-http-timeout", parse_duration, 15.0, "Timeout of one HTTP hook request", "Hooks"),
    Flag("hooks-http-size-limit", parse_non_negative_int, 5 * 1024, "Largest HTTP hook response in bytes", "Hooks"),
    Flag("hooks-http-skip-verify", parse_bool, False, "Do not verify the HTTP hook's TLS certificate", "Hooks"),
    Flag("hooks-python", str, "", "In-process Python hook as module:object", "Hooks"),
    Flag("hooks-grpc", str, "", "host:port of a gRPC hook server (tusd's HookHandler service)", "Hooks"),
    Flag("hooks-grpc-events", str, "", "Events for the gRPC hook (default: --hooks-enabled-events)", "Hooks"),
    Flag("hooks-grpc-retry", parse_non_negative_int, 3, "Retries of a gRPC hook when the server is unavailable", "Hooks"),
    Flag("hooks-grpc-backoff", parse_duration, 1.0, "Pause between gRPC hook retries", "Hooks"),
    Flag("hooks-grpc-secure", parse_bool, False, "Use TLS to the gRPC hook server", "Hooks"),
    Flag("hooks-grpc-server-tls-certificate", str, "", "CA certificate to verify the gRPC hook server", "Hooks"),
    Flag("hooks-grpc-client-tls-certificate", str, "", "Client certificate for mTLS to the gRPC hook server", "Hooks"),
    Flag("hooks-grpc-client-tls-key", str, "", "Client key for mTLS to the gRPC hook server", "Hooks"),
    Flag("hooks-grpc-forward-headers", str, "", "Request headers passed on to the gRPC hook as call metadata "
         "(comma-separated)", "Hooks"),
    Flag("hooks-fireboom", str, "", "URL of a Fireboom-style hook server (preUpload/postUpload)", "Hooks"),
    Flag("hooks-fireboom-storage", str, "tus", "Storage name in Fireboom hook URLs", "Hooks"),
    Flag("hooks-fireboom-profile", str, "default", "Upload profile name in Fireboom hook URLs", "Hooks"),
    Flag("hooks-durable", parse_bool, False, "Record post-create, post-finish and post-terminate in an outbox before "
         "answering and deliver them until the hook acknowledges (at least once, in order per upload; README "
         "'Durable delivery')", "Hooks"),
    Flag("hooks-durable-dir", str, "", "Folder of the durable hooks' outbox (default: Redis with --locker redis, "
         "else <upload-dir>/.hooks-outbox)", "Hooks"),
    Flag("hooks-durable-max-attempts", parse_non_negative_int, 0, "Delivery attempts before a durable event becomes "
         "a dead letter (0: no limit)", "Hooks"),
    Flag("hooks-durable-max-age", parse_duration, 86400.0, "Age at which an undelivered durable event becomes a dead "
         "letter (0: no limit)", "Hooks"),
    Flag("hooks-durable-backoff", parse_duration, 1.0, "Pause after a durable event's first failed delivery, doubled "
         "after each further failure", "Hooks"),
    Flag("hooks-durable-max-backoff", parse_duration, 300.0, "Longest pause between deliveries of a durable event",
         "Hooks"),
    Flag("hooks-durable-lease", parse_duration, 30.0, "TTL of a delivery lease in Redis (renewed every third)",
         "Hooks"),
    Flag("hooks-durable-poll-interval", parse_duration, 1.0, "How often each process looks for durable events to "
         "deliver (besides right after recording one)", "Hooks"),
    Flag("progress-hooks-interval", parse_duration, 1.0, "Interval of post-receive hooks while data arrives", "Hooks"),
    # upload rules
    Flag("upload-rules", str, "", "JSON file of upload rules (max_size, allowed_types, ...; see README)", "Upload rules"),
    Flag("allowed-types", str, "", "Media types an upload may have (filetype metadata; e.g. image/*,application/pdf)",
         "Upload rules"),
    Flag("allowed-extensions", str, "", "File extensions an upload may have (filename metadata; e.g. .pdf,.png)",
         "Upload rules"),
    Flag("required-metadata", str, "", "Metadata keys every upload must carry (comma-separated)", "Upload rules"),
    # storage and locks
    Flag("upload-dir", str, "./data", "Directory to store uploads in", "File storage"),
    Flag("dir-perms", parse_octal, 0o775, "Permissions of created directories (octal)", "File storage"),
    Flag("file-perms", parse_octal, 0o664, "Permissions of created files (octal)", "File storage"),
    Flag("fsync", parse_bool, False, "Flush data and .info to the device before acknowledging a PATCH or POST, so an "
         "acknowledged offset survives a power loss (slower; off as in tusd)", "File storage"),
    Flag("file-io", parse_file_io, "auto", "Where the file store and file locker make their blocking calls: 'threads' "
         "(a slow write or read delays only its own request), 'inline' (on the event loop: cheapest, for a local "
         "disk that is never slow), 'auto' (threads on NFS, SMB/CIFS, FUSE, Ceph, 9p, Lustre and other network "
         "filesystems, inline on local ones)", "File storage"),
    # S3 (chosen when --s3-bucket is set)
    Flag("s3-bucket", str, "", "Store uploads in this S3 bucket instead of --upload-dir", "S3 storage"),
    Flag("s3-object-prefix", str, "", "Prefix of every object's key (e.g. uploads/)", "S3 storage"),
    Flag("s3-metadata-object-prefix", str, "", "Prefix of the .info and .part objects (default: --s3-object-prefix)",
         "S3 storage"),
    Flag("s3-endpoint", str, "", "S3 endpoint URL of a non-AWS service (path-style addressing)", "S3 storage"),
    Flag("s3-part-size", parse_non_negative_int, 50 * 1024 * 1024, "Preferred part size in bytes", "S3 storage"),
    Flag("s3-min-part-size", parse_non_negative_int, 5 * 1024 * 1024,
         "Smallest part in bytes; fewer bytes wait in the .part object", "S3 storage"),
    Flag("s3-max-buffered-parts", parse_non_negative_int, 20,
         "Parts one request holds in temporary files at most", "S3 storage"),
    Flag("s3-concurrent-part-uploads", parse_non_negative_int, 10, "Parts uploaded in parallel at most", "S3 storage"),
    Flag("s3-disable-content-hashes", parse_bool, False,
         "Upload parts through presigned URLs without hashing their content (saves CPU)", "S3 storage"),
    Flag("s3-content-md5", parse_bool, False, "Send each part's Content-MD5, computed while it is spooled, so S3 "
         "refuses bytes damaged on the way (about 1.6 CPU-s per GiB)", "S3 storage"),
    Flag("s3-readable-uploads", parse_bool, False, "Store each part of a new upload as its own object until it is "
         "finished, so GET can read an unfinished upload (not tusd's layout while unfinished; finish copies the parts "
         "on the server)", "S3 storage"),
    Flag("s3-disable-ssl", parse_bool, False, "Use plain HTTP to S3 when no --s3-endpoint URL says", "S3 storage"),
    Flag("s3-transfer-acceleration", parse_bool, False, "Use the bucket's AWS S3 Transfer Acceleration endpoint "
         "(the bucket must have Transfer Acceleration enabled; not with --s3-endpoint)", "S3 storage"),
    Flag("s3-log-api-calls", parse_bool, False, "Log every S3 API call: operation, duration, status or error, key "
         "(for debugging; needs --verbose)", "S3 storage"),
    # GCS (chosen when --gcs-bucket is set)
    Flag("gcs-bucket", str, "", "Store uploads in this Google Cloud Storage bucket (credentials: "
         "GCS_SERVICE_ACCOUNT_FILE or application default credentials)", "GCS storage"),
    Flag("gcs-object-prefix", str, "", "Prefix of every object's name", "GCS storage"),
    Flag("gcs-endpoint", str, "", "GCS endpoint URL (an emulator or a private endpoint)", "GCS storage"),
    # Azure (chosen when --azure-storage is set)
    Flag("azure-storage", str, "", "Store uploads in this Azure Blob Storage container (account and key: "
         "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or AZURE_STORAGE_CONNECTION_STRING)", "Azure storage"),
    Flag("azure-container-access-type", str, "", "Access type of a container pytusd creates: '' (private), "
         "'blob' or 'container'", "Azure storage"),
    Flag("azure-blob-access-tier", str, "", "Access tier of finished blobs: '' (the account's default), 'hot', "
         "'cool' or 'archive'", "Azure storage"),
    Flag("azure-object-prefix", str, "", "Prefix of every blob's name", "Azure storage"),
    Flag("azure-endpoint", str, "", "Blob service URL (default https://<account>.blob.core.windows.net)",
         "Azure storage"),
    # locks
    Flag(
        "locker",
        parse_locker,
        "",
        "Upload locks: 'file' (processes on one host; the default with --upload-dir), 'memory' (one process; "
        "the default with S3) or 'redis' (any number of processes and hosts)",
        "Locks",
    ),
    Flag("redis-url", str, "redis://127.0.0.1:6379/0", "Redis server of --locker redis", "Locks"),
    Flag("redis-lock-ttl", parse_duration, 5.0,
         "A Redis lock expires this long after its holder stopped renewing it (a crashed process)", "Locks"),
    Flag(
        "filelock-holder-poll-interval",
        parse_duration,
        0.5,
        "How often a lock holder checks whether another request wants the lock",
        "Locks",
    ),
    Flag(
        "filelock-acquirer-poll-interval",
        parse_duration,
        0.1,
        "Longest wait between attempts of a request waiting for a lock",
        "Locks",
    ),
    # timeouts
    Flag("network-timeout", parse_duration, 60.0, "Close connections idle (or silent mid-body) this long", "Timeouts"),
    Flag("shutdown-timeout", parse_duration, 10.0, "Longest graceful shutdown before exiting anyway", "Timeouts"),
    Flag("acquire-lock-timeout", parse_duration, 20.0, "Longest wait for an upload's lock (then 500)", "Timeouts"),
    Flag("request-completion-timeout", parse_duration, 10.0, "Once a request ended early (the client went away, "
         "shutdown, another request wants the lock), how long the storage may still take to store what it received; "
         "then that is cancelled (0: the default)", "Timeouts"),
    Flag("min-body-rate", parse_non_negative_float, 10.0, "End a request body arriving slower than this many "
         "bytes/s, on average over each --network-timeout (slowloris); 0: only silence ends it, as in tusd",
         "Timeouts"),
    # limits (beyond tusd)
    Flag("max-concurrent-uploads", parse_non_negative_int, 0, "Most PATCH (or POST with data) requests writing at "
         "once, per process; more get 503 ERR_TOO_MANY_UPLOADS with Retry-After (0: no limit)", "Limits"),
    Flag("max-uploads-per-client", parse_non_negative_int, 0, "Most such requests at once per client IP (the last "
         "X-Forwarded-For entry with --behind-proxy); more get 429 ERR_TOO_MANY_CLIENT_UPLOADS (0: no limit)",
         "Limits"),
    # output
    Flag("verbose", parse_bool, True, "Log every request", "Output"),
    Flag("show-startup-logs", parse_bool, True, "Log the start-up lines (what pytusd serves, with which storage, "
         "and 'You can now upload files to: URL'); false hides them (warnings and errors are always logged)",
         "Output"),
    Flag("log-format", parse_log_format, "text", "Log format: text or json", "Output"),
    Flag(
        "malloc-tuning",
        parse_bool,
        True,
        "Tune glibc malloc thresholds at start-up (about 2x upload throughput); false to opt out",
        "Output",
    ),
    # observability (README "Operating pytusd")
    Flag("expose-metrics", parse_bool, True, "Serve Prometheus metrics at --metrics-path", "Observability"),
    Flag("metrics-path", str, "/metrics", "Path of the Prometheus metrics (PROMETHEUS_MULTIPROC_DIR: summed over "
         "every process writing there)", "Observability"),
    Flag("health-path", str, "/health", "Liveness endpoint: 200 while the process runs ('' to turn off)",
         "Observability"),
    Flag("ready-path", str, "/ready", "Readiness endpoint: 200 when the storage and the locker answer, else 503 "
         "('' to turn off)", "Observability"),
    Flag("otel-traces", parse_otel_exporter, "", "Export OpenTelemetry traces: 'console' or 'otlp' (needs "
         "the otel extra; otlp also opentelemetry-exporter-otlp and OTEL_EXPORTER_OTLP_*). Without it, a tracer "
         "provider set up by opentelemetry-instrument is used when there is one", "Observability"),
]

BOOL_FLAGS = {f.name for f in FLAGS if f.type is parse_bool}

# tusd flags of features that only a Go program has: each is refused, in one line (exit status 2), with what to use
# instead, rather than the "unknown flag" a typo gets.
_PPROF = ("Go's pprof profiler has no Python counterpart in pytusd; profile the running process with py-spy "
          "(py-spy top --pid PID, py-spy record --pid PID) and its memory with tracemalloc (PYTHONTRACEMALLOC=1)")
GO_ONLY_FLAGS = {
    "expose-pprof": _PPROF,
    "pprof-path": _PPROF,
    "pprof-block-profile-rate": _PPROF,
    "pprof-mutex-profile-rate": _PPROF,
    "hooks-plugin": "Go plugins cannot be loaded by Python; write the hooks as a Python object and pass it with "
                    "--hooks-python module:object",
}


def env_name(flag: str) -> str:
    return "PYTUSD_" + flag.upper().replace("-", "_")


def normalise_argv(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Accept Go-style single-dash long flags (``-upload-dir``) as well as ``--upload-dir``.

    With ``parser``, a flag that is none of pytusd's is an error naming the closest real one (``-hooks-dri``:
    did you mean ``-hooks-dir``?), instead of argparse reading ``-h...`` as ``-h`` with a value."""
    known = {f.name for f in FLAGS} | {"version", "help", "json"}
    out = []
    takes_value = False  # the previous argument is a flag whose value comes next
    for arg in argv:
        if takes_value:
            takes_value = False
            out.append(arg)
            continue
        if arg == "--":
            out.append(arg)
            continue
        if arg.startswith("-") and len(arg) > 1 and not arg[1:2].isdigit():
            dashes = "--" if arg.startswith("--") else "-"
            name, has_value, _ = arg[len(dashes):].partition("=")
            if name in GO_ONLY_FLAGS and parser is not None:
                parser.error(f"{dashes}{name} is a tusd (Go) flag pytusd does not take: {GO_ONLY_FLAGS[name]}")
            if name in known:
                arg = "--" + arg[len(dashes):]
                takes_value = not has_value and name not in BOOL_FLAGS and name not in ("version", "help", "json")
            elif name != "h" and parser is not None:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {dashes}{close[0]}?" if close else " (see pytusd --help)"
                parser.error(f"unknown flag {dashes}{name}{hint}")
        out.append(arg)
    return out


ADMIN_COMMANDS = ("cleanup", "list", "info", "delete", "hooks")

# What each admin command's --help shows: the flags that choose its store (and locker, hooks, expiry where it uses
# them). It still accepts every server flag, so a server's command line works with the command put in front of it.
_STORAGE_GROUPS = ("File storage", "S3 storage", "GCS storage", "Azure storage")
_SUBCOMMANDS: dict[str, tuple[str, str, str, tuple[str, ...], frozenset[str]]] = {
    # command: (usage, what it does, example, flag groups shown, single flags shown)
    "list": (
        "pytusd list [--json] [flags]",
        "Lists the uploads of the store: ID, size, offset, state, filename and expiry (text, or every field with "
        "--json). Client text (filenames) is printed escaped.",
        "pytusd list --upload-dir ./data\n  pytusd list --json --s3-bucket uploads --s3-endpoint http://127.0.0.1:7480",
        _STORAGE_GROUPS, frozenset({"expiration", "log-format"}),
    ),
    "info": (
        "pytusd info ID [--json] [flags]",
        "Shows one upload: its size, offset, state, metadata and storage.",
        "pytusd info 3262cb09f3c3e8b4ab3e2a0c1bfb0d52 --upload-dir ./data",
        _STORAGE_GROUPS, frozenset({"expiration", "log-format"}),
    ),
    "delete": (
        "pytusd delete ID [--json] [flags]",
        "Deletes one upload as a DELETE request would: it takes the upload's lock first (a running server that "
        "shares the locker lets go of it), then fires the post-terminate hook if hooks are configured.",
        "pytusd delete 3262cb09f3c3e8b4ab3e2a0c1bfb0d52 --upload-dir ./data --hooks-dir ./hooks",
        (*_STORAGE_GROUPS, "Locks"),
        frozenset({"acquire-lock-timeout", "log-format", "hooks-dir", "hooks-http", "hooks-grpc", "hooks-python",
                   "hooks-enabled-events"}),
    ),
    "hooks": (
        "pytusd hooks pending | retry [ID] | drop ID [--json] [flags]",
        "The durable hooks' outbox (--hooks-durable): 'pending' lists the events not yet delivered and the dead "
        "letters; 'retry' makes one (or every) dead or waiting event due now; 'drop' removes one.",
        "pytusd hooks pending --hooks-durable --upload-dir ./data --hooks-http http://127.0.0.1:8000/",
        ("File storage", "Locks", "Hooks"), frozenset({"log-format"}),
    ),
    "cleanup": (
        "pytusd cleanup --expiration DURATION [flags]",
        "Removes, once, the unfinished uploads that have not changed for --expiration, and exits: for cron or a "
        "one-off job. Uploads whose lock is held are left alone.",
        "pytusd cleanup --expiration 24h --upload-dir ./data",
        (*_STORAGE_GROUPS, "Locks"), frozenset({"expiration", "acquire-lock-timeout", "log-format"}),
    ),
}


def build_parser(command: str = "serve") -> argparse.ArgumentParser:
    sub = _SUBCOMMANDS.get(command)
    if sub is None:
        parser = argparse.ArgumentParser(
            prog="pytusd",
            usage="pytusd [cleanup | list | info ID | delete ID | hooks pending|retry|drop] [flags]",
            description="pytusd: a tus resumable-upload server. Admin commands take the same flags and work on the "
            "store they name: 'pytusd list' (uploads: ID, size, offset, state, filename, expiry; --json), "
            "'pytusd info ID', 'pytusd delete ID' (takes the upload's lock, then deletes it) and 'pytusd cleanup' "
            "(removes expired uploads once, for cron), 'pytusd hooks pending | retry [ID] | drop ID' (the outbox of "
            "--hooks-durable); 'pytusd COMMAND --help' shows each one's flags. Every flag "
            "can also be set as PYTUSD_<NAME> in the environment (e.g. PYTUSD_UPLOAD_DIR); booleans accept --flag, "
            "--flag=true and --flag=false.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    else:
        usage, what, example, _, _ = sub
        parser = argparse.ArgumentParser(
            prog=f"pytusd {command}",
            usage=usage,
            description=f"{what} It takes the server's flags, so it reaches the same store; those that matter here "
            "are listed below (also as PYTUSD_<NAME> in the environment).",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    if command in ("list", "info", "delete", "hooks"):
        parser.add_argument("ids", nargs="*", metavar="ID", help="upload ID (info, delete); for hooks: pending, "
                            "retry [EVENT-ID] or drop EVENT-ID")
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for flag in FLAGS:
        shown_here = sub is None or flag.group in sub[3] or flag.name in sub[4]
        group = groups.get(flag.group) or groups.setdefault(flag.group, parser.add_argument_group(flag.group))
        default = flag.default
        env = os.environ.get(env_name(flag.name))
        if env is not None:
            try:
                default = flag.type(env)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{env_name(flag.name)}: {exc}")
        shown = oct(flag.default)[2:].rjust(4, "0") if flag.type is parse_octal else flag.default
        help_text = f"{flag.help} (default {shown!r}; env {env_name(flag.name)})" if shown_here else argparse.SUPPRESS
        kwargs: dict[str, Any] = {"type": flag.type, "default": default, "help": help_text}
        if flag.name in BOOL_FLAGS:
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        else:
            kwargs["metavar"] = flag.name.split("-")[-1].upper()
        group.add_argument("--" + flag.name, dest=flag.name.replace("-", "_"), **kwargs)
    parser.add_argument("--version", action="version", version=f"pytusd {__version__}")
    return parser


