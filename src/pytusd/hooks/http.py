"""HTTP hooks: the HookRequest JSON is POSTed to an endpoint, as tusd's ``-hooks-http``.

Network errors and 5xx answers are retried ``retry`` times, ``backoff`` seconds apart; any other non-2xx answer is
a hook failure, as is a body larger than ``size_limit`` or one that is not JSON. Notification events carry an
``Idempotency-Key`` (the same on every retry; with ``--hooks-durable`` the event's ``EventID``, the same on every
delivery) so a receiver can drop duplicates. Every call carries the
request's ``X-Request-ID`` (and, when tracing, a ``traceparent``). Client headers named in ``forward_headers`` are
added as :func:`~pytusd.hooks.base.hook_request_headers` allows: never over pytusd's own or the request's framing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from ..observe import tracing
from .base import BLOCKING_HOOKS, decode_answer, forwarded_header_names, hook_request_headers


class HookHttpError(RuntimeError):
    pass


class JsonPoster:
    """POSTs JSON and decodes the JSON answer, with retries on network errors and 5xx and a size limit."""

    def __init__(
        self, *, retry: int = 3, backoff: float = 1.0, timeout: float = 15.0, size_limit: int = 5 * 1024,
        verify: bool = True,
    ) -> None:
        self.retry = retry
        self.backoff = backoff
        self.size_limit = size_limit
        self._client = httpx.AsyncClient(timeout=timeout, verify=verify)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(
        self, url: str, payload: Any, headers: Mapping[str, str],
        incoming: Mapping[str, Iterable[str]] | None = None, forward: Iterable[str] = (),
    ) -> Any:
        """POST ``payload`` as JSON with pytusd's own ``headers``; ``forward`` names fields of ``incoming`` (the
        client's request) to pass on, by the rule of :func:`~pytusd.hooks.base.hook_request_headers`."""
        data = json.dumps(payload).encode()
        fields = hook_request_headers({**headers, "Content-Type": "application/json"}, incoming, forward)
        # As bytes: a forwarded value may be Latin-1 text, which httpx would refuse to encode as ASCII.
        raw_headers = [(name.encode("ascii"), value.encode("latin-1")) for name, value in fields.items()]
        attempt = 0
        while True:
            try:
                async with self._client.stream("POST", url, content=data, headers=raw_headers) as response:
                    body = bytearray()
                    async for block in response.aiter_bytes():
                        body += block
                        if len(body) > self.size_limit:
                            raise HookHttpError(f"hook response is larger than {self.size_limit} bytes")
                    status = response.status_code
            except httpx.TransportError as exc:
                failure: Exception = exc
            else:
                if 200 <= status < 300:
                    return decode_answer(bytes(body), url)
                failure = HookHttpError(f"hook endpoint answered {status}")
                if status < 500:
                    raise failure
            if attempt >= self.retry:
                raise HookHttpError(f"hook endpoint failed after {attempt + 1} attempts: {failure}") from failure
            attempt += 1
            await asyncio.sleep(self.backoff)


class HttpHookBackend:
    def __init__(
        self,
        endpoint: str,
        *,
        forward_headers: Iterable[str] = (),
        retry: int = 3,
        backoff: float = 1.0,
        timeout: float = 15.0,
        size_limit: int = 5 * 1024,
        verify: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.forward_headers = forwarded_header_names(forward_headers)
        self.poster = JsonPoster(retry=retry, backoff=backoff, timeout=timeout, size_limit=size_limit, verify=verify)

    def __repr__(self) -> str:
        return f"HttpHookBackend({self.endpoint!r})"

    async def aclose(self) -> None:
        await self.poster.aclose()

    def _headers(self, hook_type: str, request: dict[str, Any]) -> dict[str, str]:
        """pytusd's own header fields of a hook call (the forwarded ones are added by JsonPoster.post)."""
        headers = {"Hook-Name": hook_type}
        if hook_type not in BLOCKING_HOOKS:
            # The outbox's event ID (--hooks-durable: the same on every delivery), else one per call.
            headers["Idempotency-Key"] = str(request.get("EventID") or secrets.token_hex(16))
        incoming = request["Event"]["HTTPRequest"].get("Header", {})
        request_id = {k.lower(): v for k, v in incoming.items()}.get("x-request-id")
        if request_id:
            headers["X-Request-ID"] = request_id[-1]  # the payload's, which is the request's ID (hooks/base.py)
        tracing.inject(headers)  # traceparent of the hook's span, when tracing
        return headers

    async def invoke(self, hook_type: str, request: dict[str, Any]) -> Any:
        incoming = request["Event"]["HTTPRequest"].get("Header", {})
        return await self.poster.post(
            self.endpoint, request, self._headers(hook_type, request), incoming, self.forward_headers
        )
