"""The ``pytusd`` command: tusd's flags and defaults -> one :class:`pytusd.Config` -> serve.

Every flag can also come from the environment as ``PYTUSD_<NAME>`` (``--upload-dir`` is ``PYTUSD_UPLOAD_DIR``); a
flag on the command line wins. Like Go's flag package, ``-name value``, ``-name=value`` and ``--name`` all work, and
booleans take ``--flag``, ``--flag=true`` or ``--flag=false``.

Laid out as :mod:`.flags` (the flags and their syntax), :mod:`.compose` (flags -> :class:`pytusd.Config`) and :mod:`.main`
(serve or run an admin command).
"""

from .main import main, run

__all__ = ["main", "run"]
