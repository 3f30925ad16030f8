"""Hashes whose running state can be saved and resumed in another process (``--digest``).

Python's :mod:`hashlib` cannot export the state of a hash in progress, and the PyPI packages that can were measured
and fall short (``bench/NOTES.md``, "Whole-upload digests"): one reaches into CPython's private structures and
refuses OpenSSL 3, one is a portable C SHA-256 at an eighth of OpenSSL's speed, one is SHA-1 only. So this module
calls OpenSSL's own low-level digest API (``SHA256_Init`` / ``_Update`` / ``_Final`` and the SHA-512 ones, public in
``openssl/sha.h``) through :mod:`ctypes`, on a context buffer it owns. Its bytes are the state: saving is a copy,
resuming is a copy back. It is the same libcrypto, with the same CPU instructions, that hashlib uses, and ctypes lets
go of the GIL while OpenSSL hashes.

A saved state is checked field by field before OpenSSL sees it (its buffer count below the block size, its digest
length the algorithm's), so a damaged or forged state can give a wrong digest at worst, never a bad memory access.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import struct
import sys
from dataclasses import dataclass
from typing import Any


class Unavailable(RuntimeError):
    """OpenSSL's libcrypto, or the digest functions in it, could not be loaded."""


@dataclass(frozen=True)
class _Kind:
    name: str  # the algorithm's name in pytusd's flags: "sha256"
    symbol: str  # the OpenSSL function prefix: "SHA256"
    ctx_size: int  # sizeof(SHA256_CTX) per openssl/sha.h
    tail: int  # where the two trailing unsigned ints (num, md_len) start
    block: int  # bytes per compression block: num stays below it
    digest_size: int


# The context layouts of openssl/sha.h (stable since OpenSSL 0.9.8, unchanged in 3.x): SHA256_CTX is eight 32-bit
# words of state, two of length, sixteen of buffer, then num and md_len; SHA512_CTX the same with 64-bit words.
KINDS = {
    "sha256": _Kind("sha256", "SHA256", ctx_size=112, tail=104, block=64, digest_size=32),
    "sha512": _Kind("sha512", "SHA512", ctx_size=216, tail=208, block=128, digest_size=64),
}


def _find_libcrypto() -> str:
    """The libcrypto Python's own hashlib uses (the one mapped into this process), else the system's."""
    import _hashlib  # noqa: F401 - loads libcrypto into the process, so /proc/self/maps names it

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcrypto" in path and ".so" in path:
                    return path
    except OSError:
        pass
    found = ctypes.util.find_library("crypto")
    if found is None:
        raise Unavailable("OpenSSL's libcrypto was not found")
    return found


class _Library:
    def __init__(self) -> None:
        path = _find_libcrypto()
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise Unavailable(f"OpenSSL's libcrypto ({path}) could not be loaded: {exc}") from exc
        self.path = path
        self.functions: dict[str, tuple[Any, Any, Any]] = {}
        for kind in KINDS.values():
            try:
                init = getattr(lib, f"{kind.symbol}_Init")
                update = getattr(lib, f"{kind.symbol}_Update")
                final = getattr(lib, f"{kind.symbol}_Final")
            except AttributeError as exc:
                raise Unavailable(f"{path} has no {kind.symbol}_Init/_Update/_Final: {exc}") from exc
            init.argtypes = [ctypes.c_void_p]
            update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            init.restype = update.restype = final.restype = ctypes.c_int
            self.functions[kind.name] = (init, update, final)


_library: _Library | None = None


def library() -> _Library:
    """The loaded libcrypto (loaded on first use); raises :class:`Unavailable` saying why not."""
    global _library
    if _library is None:
        _library = _Library()
    return _library


def check_available(algorithm: str) -> None:
    """Raise ValueError for an unknown algorithm and :class:`Unavailable` when it cannot run here."""
    if algorithm not in KINDS:
        raise ValueError(f"unknown digest algorithm {algorithm!r} (choose from {', '.join(KINDS)})")
    library()


_STATE_PREFIX = "ossl1" + ("le" if sys.byteorder == "little" else "be")


class ResumableHash:
    """A running SHA-256 or SHA-512: :meth:`update`, :meth:`digest` (the hash so far, the state untouched),
    :meth:`state` (text to save) and :meth:`resume` (from that text, in any process of the same byte order)."""

    __slots__ = ("kind", "_ctx", "_update")

    def __init__(self, algorithm: str, _ctx: ctypes.Array[ctypes.c_char] | None = None) -> None:
        check_available(algorithm)
        self.kind = KINDS[algorithm]
        init, self._update, _ = library().functions[algorithm]
        if _ctx is None:
            _ctx = ctypes.create_string_buffer(self.kind.ctx_size)
            if init(_ctx) != 1:
                raise Unavailable(f"{self.kind.symbol}_Init failed")
        self._ctx = _ctx

    @property
    def name(self) -> str:
        return self.kind.name

    def update(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data) if not isinstance(data, memoryview) else data.nbytes
        if not size:
            return
        if isinstance(data, bytes):
            pointer: Any = data
        elif isinstance(data, memoryview) and (data.readonly or not data.c_contiguous):
            pointer = data.tobytes()  # ctypes takes no read-only buffer; rare (the servers hand over bytes)
        else:
            pointer = (ctypes.c_char * size).from_buffer(data)
        if self._update(self._ctx, pointer, size) != 1:
            raise RuntimeError(f"{self.kind.symbol}_Update failed")

    def copy(self) -> ResumableHash:
        return ResumableHash(self.kind.name, ctypes.create_string_buffer(self._ctx.raw, self.kind.ctx_size))

    def digest(self) -> bytes:
        final = library().functions[self.kind.name][2]
        ctx = ctypes.create_string_buffer(self._ctx.raw, self.kind.ctx_size)  # Final consumes its context
        out = ctypes.create_string_buffer(self.kind.digest_size)
        if final(out, ctx) != 1:
            raise RuntimeError(f"{self.kind.symbol}_Final failed")
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def state(self) -> str:
        """The running state as text: ``ossl1le:<base64 of the context>`` (the prefix names the byte order)."""
        return f"{_STATE_PREFIX}:{base64.b64encode(self._ctx.raw).decode('ascii')}"

    @classmethod
    def resume(cls, algorithm: str, state: str) -> ResumableHash:
        """The hash whose :meth:`state` was ``state``; ValueError when the text is not a valid state of that
        algorithm for this machine (then the caller starts over from the bytes)."""
        check_available(algorithm)
        kind = KINDS[algorithm]
        prefix, _, encoded = state.partition(":")
        if prefix != _STATE_PREFIX:
            raise ValueError(f"a {prefix or 'malformed'} hash state, not {_STATE_PREFIX}")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError as exc:
            raise ValueError(f"the hash state is not base64: {exc}") from exc
        if len(raw) != kind.ctx_size:
            raise ValueError(f"a {kind.name} hash state has {kind.ctx_size} bytes, not {len(raw)}")
        num, md_len = struct.unpack_from("=II", raw, kind.tail)
        # OpenSSL trusts num as the bytes buffered in the context: one at or past the block would make it copy
        # out of bounds. md_len must be the algorithm's (SHA-224/384 share these contexts with other lengths).
        if num >= kind.block or md_len != kind.digest_size:
            raise ValueError(f"not a valid {kind.name} hash state (num={num}, md_len={md_len})")
        return cls(algorithm, ctypes.create_string_buffer(raw, kind.ctx_size))
