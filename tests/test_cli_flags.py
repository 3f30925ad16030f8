"""tusd's flags on pytusd's command line: the ones pytusd takes with tusd's meaning and default, and the Go-only
ones, which are refused with what to use instead."""

from __future__ import annotations

import pytest

from pytusd.cli import _GO_ONLY_FLAGS, _normalise_argv, build_parser, main

# The names as tusd's cmd/tusd/cli/flags.go declares them.
TUSD_GO_ONLY = ("expose-pprof", "pprof-path", "pprof-block-profile-rate", "pprof-mutex-profile-rate", "hooks-plugin")


def parse(*argv: str):
    parser = build_parser()
    return parser.parse_args(_normalise_argv(list(argv), parser))


@pytest.mark.parametrize("flag", [
    "-expose-pprof", "--expose-pprof", "-expose-pprof=true", "-pprof-path=/debug/pprof/", "-pprof-block-profile-rate",
    "-pprof-mutex-profile-rate=1", "-hooks-plugin", "--hooks-plugin=./hooks.so",
])
def test_go_only_flags_are_refused_with_what_to_use_instead(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([flag, "--upload-dir", "/nonexistent"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("pytusd: error:")]
    name = flag.lstrip("-").split("=")[0]
    assert f"{flag.split('=')[0]} is a tusd (Go) flag pytusd does not take" in line
    if name == "hooks-plugin":
        assert "--hooks-python module:object" in line
    else:
        assert "py-spy" in line and "tracemalloc" in line
    assert "did you mean" not in err


def test_the_go_only_table_names_tusds_flags():
    assert set(_GO_ONLY_FLAGS) == set(TUSD_GO_ONLY)
    assert "hooks-python" in {action.dest.replace("_", "-") for action in build_parser()._actions}


def serve_with(monkeypatch, tmp_path, *argv: str) -> dict:
    """Run ``pytusd ARGV`` up to the point where it would serve: what it would serve with."""
    import pytusd.server

    seen: dict = {}

    def fake_serve(app, options, *args, **kwargs):
        seen.update(app=app, options=options, args=args, kwargs=kwargs)

    monkeypatch.setattr(pytusd.server, "serve", fake_serve)
    assert main(["--upload-dir", str(tmp_path / "data"), "--malloc-tuning=false", *argv]) == 0
    return seen


def test_enable_h2c_reaches_the_server_options(monkeypatch, tmp_path):
    assert serve_with(monkeypatch, tmp_path)["options"].enable_h2c is False
    assert serve_with(monkeypatch, tmp_path, "-enable-h2c")["options"].enable_h2c is True
    assert serve_with(monkeypatch, tmp_path, "-enable-h2c=false")["options"].enable_h2c is False
    assert "HTTP/2" in build_parser().format_help()


def test_enable_h2c_and_tls_are_refused_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-enable-h2c", "-tls-certificate", "c.pem", "-tls-key", "k.pem", "--upload-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--enable-h2c is HTTP/2 without encryption" in capsys.readouterr().err
