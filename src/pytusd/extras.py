"""What to install for an optional part: one hint for every missing extra, that works wherever pytusd came from.

pytusd is installed from a checkout (``pip install .``), so ``pip install 'pytusd[s3]'`` would look for it on PyPI
and fail. The packages an extra stands for install the same way everywhere, so the hint names them, read from the
installed distribution's own metadata (the ranges of ``pyproject.toml``), and adds the checkout's form.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def requirements(extra: str) -> list[str]:
    """The requirements of pytusd's extra ``extra`` (``["boto3>=1.35"]`` for ``s3``); [] when unknown."""
    try:
        declared = importlib.metadata.requires("pytusd") or []
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return []
    found = []
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        match = _EXTRA_MARKER.search(marker)
        if match and match.group(1) == extra:
            found.append(spec.strip())
    return found


def install_hint(extra: str) -> str:
    """``pip install 'boto3>=1.35' (from a pytusd checkout: pip install '.[s3]')``, for a message."""
    checkout = f"pip install '.[{extra}]'"
    packages = requirements(extra)
    if not packages:
        return f"{checkout} in a pytusd checkout"
    return f"pip install {' '.join(shlex.quote(p) for p in packages)} (from a pytusd checkout: {checkout})"


def missing(what: str, extra: str) -> str:
    """The whole message: ``the S3 store needs boto3: pip install 'boto3>=1.35' (from a pytusd checkout: ...)``."""
    return f"{what}: {install_hint(extra)}"
