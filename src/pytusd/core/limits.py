"""Upload slots: ``--max-concurrent-uploads`` and ``--max-uploads-per-client`` (beyond tusd).

A request that writes (PATCH, or POST with a body: creation-with-upload) takes a slot before its body is read and
gives it back when it ends. When none is free it is answered at once, its body unread (so the connection closes):

- all ``max_concurrent`` slots taken: 503 ``ERR_TOO_MANY_UPLOADS`` with ``Retry-After``;
- the client has ``max_per_client`` requests writing already: 429 ``ERR_TOO_MANY_CLIENT_UPLOADS`` with
  ``Retry-After``.

A client is its IP address: the TCP peer's, or with ``behind_proxy`` the address the proxy in front of pytusd
appended to ``X-Forwarded-For`` (its last entry; else the last ``for=`` of ``Forwarded``). The last entry is the one
that proxy saw; earlier ones are whatever the client claimed, and trusting those would let a client pick a new
identity per request. Behind several proxies the last entry is the previous proxy's view, so the per-client limit
applies per address that proxy saw.

Slots are counted in this process (one event loop, no locking needed); under ``--workers N`` each worker has its own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from .. import errors
from .http import Request

_FORWARDED_FOR = re.compile(r'for\s*=\s*"?\[?([^",;\]\s]+)', re.IGNORECASE)


def client_key(request: Request, behind_proxy: bool) -> str:
    """The client's IP address, as the per-client limit counts it."""
    if behind_proxy:
        forwarded_for = request.headers.get("x-forwarded-for")
        if forwarded_for:
            last = forwarded_for.rsplit(",", 1)[-1].strip()
            if last:
                return _without_port(last)
        forwarded = request.headers.get("forwarded")
        if forwarded:
            found = _FORWARDED_FOR.findall(forwarded)
            if found:
                return _without_port(found[-1])
    client = request.scope.get("client")
    return str(client[0]) if client else ""


def _without_port(address: str) -> str:
    # "192.0.2.1:4711" -> "192.0.2.1"; IPv6 ("2001:db8::1", bracketed ones had their brackets removed) stays.
    return address.split(":", 1)[0] if address.count(":") == 1 else address


class UploadSlots:
    def __init__(self, max_concurrent: int, max_per_client: int, behind_proxy: bool = False, retry_after: int = 1):
        self.max_concurrent = max_concurrent
        self.max_per_client = max_per_client
        self.behind_proxy = behind_proxy
        self.retry_after = str(max(0, retry_after))
        self.active = 0
        self.per_client: dict[str, int] = {}

    @staticmethod
    def applies(request: Request) -> bool:
        """Whether the request writes upload data: a PATCH, or a POST that carries a body."""
        return request.method == "PATCH" or (request.method == "POST" and request.has_body)

    @contextlib.contextmanager
    def slot(self, request: Request) -> Iterator[None]:
        """Hold a slot for the request's lifetime, or raise the 503/429 answer."""
        key = client_key(request, self.behind_proxy) if self.max_per_client else ""
        if self.max_concurrent and self.active >= self.max_concurrent:
            raise errors.ERR_TOO_MANY_UPLOADS(headers={"Retry-After": self.retry_after})
        if self.max_per_client and self.per_client.get(key, 0) >= self.max_per_client:
            raise errors.ERR_TOO_MANY_CLIENT_UPLOADS(headers={"Retry-After": self.retry_after})
        self.active += 1
        if self.max_per_client:
            self.per_client[key] = self.per_client.get(key, 0) + 1
        try:
            yield
        finally:
            self.active -= 1
            if self.max_per_client:
                left = self.per_client[key] - 1
                if left:
                    self.per_client[key] = left
                else:
                    del self.per_client[key]
