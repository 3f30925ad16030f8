"""The first five minutes of a newcomer, through the real command: install hints that work, clear messages for
typos and missing uploads, help per admin command, and a start-up line that says what it runs on."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY_FLAGS = ("--cors-allow-origin", "--max-size", "--port", "--network-timeout", "--metrics-path", "--upload-page")


def pytusd(*args: str, env: dict[str, str] | None = None, blocked: str = "") -> subprocess.CompletedProcess[str]:
    """``pytusd ARGS``; with ``blocked``, as if that package were not installed."""
    code = f"import sys; sys.modules[{blocked!r}] = None; " if blocked else "import sys; "
    code += "from pytusd.server.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def extra(name: str) -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"][name]


@pytest.mark.parametrize(("flags", "blocked", "name"), [
    (["--s3-bucket", "b"], "boto3", "s3"),
    (["--locker", "redis", "--redis-url", "redis://127.0.0.1:1/0"], "redis", "redis"),
    (["--gcs-bucket", "b"], "google.cloud.storage", "gcs"),
    (["--azure-storage", "c"], "azure.storage.blob", "azure"),
    (["--hooks-grpc", "127.0.0.1:1"], "grpc", "grpc"),
    (["--otel-traces", "console"], "opentelemetry", "otel"),
])
def test_a_missing_extra_names_what_to_install_wherever_pytusd_came_from(tmp_path, flags, blocked, name):
    """``pip install 'pytusd[s3]'`` fails (pytusd is not on PyPI): the hint names the packages of the extra, with
    the ranges pyproject.toml gives, and the checkout's form."""
    from packaging.requirements import Requirement

    run = pytusd(*flags, "--upload-dir", str(tmp_path / "d"), blocked=blocked)
    assert run.returncode == 2, run.stderr
    hinted = run.stderr.split(": pip install ", 1)[1].split(" (from a pytusd checkout:", 1)[0]
    assert [Requirement(r) for r in shlex.split(hinted)] == [Requirement(r) for r in extra(name)], run.stderr
    assert f"(from a pytusd checkout: pip install '.[{name}]')" in run.stderr
    assert "pytusd[" not in run.stderr and "Traceback" not in run.stderr


def test_no_hint_anywhere_asks_for_pytusd_from_pypi():
    for path in [ROOT / "README.md", *sorted((ROOT / "src" / "pytusd").rglob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        if path.name == "extras.py":
            continue  # explains why not
        assert "pip install 'pytusd[" not in text and "pip install pytusd[" not in text, path


@pytest.mark.parametrize(("typo", "meant"), [
    ("-hooks-dri=./hooks", "-hooks-dir"),
    ("-hots=127.0.0.1", "-host"),
    ("--upload-dri", "--upload-dir"),
    ("-hooks-http-forward-header=Authorization", "-hooks-http-forward-headers"),
])
def test_a_typo_is_an_unknown_flag_with_the_closest_real_one(tmp_path, typo, meant):
    run = pytusd(typo, "x" if "=" not in typo else "", "--upload-dir", str(tmp_path))
    assert run.returncode == 2
    assert f"unknown flag {typo.split('=')[0]}; did you mean {meant}?" in run.stderr, run.stderr
    assert "ignored explicit argument" not in run.stderr


def test_go_style_flags_and_values_that_look_like_flags_still_work(tmp_path):
    run = pytusd("list", "-upload-dir", str(tmp_path / "d"), "-expiration", "1h", "--log-format=json")
    assert run.returncode == 0, run.stderr


def test_info_of_a_missing_upload_names_the_id_and_the_store(tmp_path):
    run = pytusd("info", "3262cb09f3c3e8b4ab3e2a0c1bfb0d52", "--upload-dir", str(tmp_path))
    assert run.returncode == 1
    assert run.stderr.strip() == (f"pytusd info: upload 3262cb09f3c3e8b4ab3e2a0c1bfb0d52 does not exist in "
                                  f"FileStore({str(tmp_path)!r})")


@pytest.mark.parametrize("command", ["list", "info", "delete", "cleanup"])
def test_each_admin_command_has_its_own_help(command):
    server_help = pytusd("--help").stdout
    run = pytusd(command, "--help")
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert text.startswith(f"usage: pytusd {command}") and "\nexample:\n  pytusd " + command in text
    for flag in ("--upload-dir", "--s3-bucket", "--gcs-bucket", "--azure-storage"):
        assert flag in text, flag
    for flag in SERVER_ONLY_FLAGS:
        assert flag not in text, flag
    if command in ("delete", "cleanup"):
        assert "--locker" in text and "--redis-url" in text
    if command == "delete":
        assert "--hooks-dir" in text
    if command == "cleanup":
        assert "--expiration" in text
    assert len(text.splitlines()) < len(server_help.splitlines()) / 2
    assert "'pytusd COMMAND --help'" in server_help


def test_admin_commands_still_take_a_servers_whole_command_line(tmp_path):
    run = pytusd("list", "--port", "9000", "--cors-allow-origin", "x", "--upload-dir", str(tmp_path / "d"))
    assert run.returncode == 0, run.stderr


def test_the_start_up_line_names_the_locker_readably(pytusd_factory):
    server = pytusd_factory("--locker", "memory")
    line = next(line for line in server.log().splitlines() if "serving uploads at" in line)
    assert "locker MemoryLocker(this process only)" in line and " object at 0x" not in line


def test_an_object_store_with_the_memory_locker_warns_at_start_up(pytusd_factory, s3_keys):
    import boto3

    bucket = f"first-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_keys).create_bucket(Bucket=bucket)
    server = pytusd_factory("--s3-bucket", bucket, "--s3-endpoint", s3_keys)
    assert httpx.options(server.url).status_code == 200
    log = server.log()
    banner = next(line for line in log.splitlines() if "serving uploads at" in line)
    assert f"storage S3Store('{bucket}'" in banner and "locker MemoryLocker(this process only)" in banner
    warning = [line for line in log.splitlines() if "level=WARNING" in line and "locker memory" in line]
    assert len(warning) == 1 and "--locker redis" in warning[0]


def test_readmes_first_upload_runs_as_written(pytusd_factory, tmp_path):
    """README "Run it": the curl commands, exactly as written there, against a real server (its port put in)."""
    import re
    import shutil

    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is required in CI (scripts/test installs it)")
        pytest.skip("curl missing")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- first-upload:[^>]*-->\n```sh\n(.*?)```", readme, re.S)
    assert block is not None
    server = pytusd_factory()
    script = block.group(1).replace("http://localhost:8080/", server.url.rsplit("/files/", 1)[0] + "/")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    size = (ROOT / "README.md").stat().st_size
    out = run.stdout.lower()
    assert f"upload-offset: {size}" in out and out.strip().endswith("the server holds the same bytes"), run.stdout


@pytest.mark.parametrize("command", ["list", "cleanup"])
def test_an_admin_command_on_a_file_for_upload_dir_says_so(command):
    run = pytusd(command, "--upload-dir", "/etc/passwd", "--expiration", "1h")
    assert run.returncode == 2
    assert "--upload-dir /etc/passwd is a file, not a directory" in run.stderr and "Errno" not in run.stderr
