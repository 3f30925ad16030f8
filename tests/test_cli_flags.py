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
