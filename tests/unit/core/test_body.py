"""The slow-body rule of RequestBody (pytusd.core.body): a body slower than --min-body-rate ends with a read
timeout, a slow but steady one does not, silence still ends a body, and time the store spends is not the client's."""

from __future__ import annotations

import asyncio
from typing import Any

from pytusd.core.body import RequestBody


# -- the slow-body rule (RequestBody) ---------------------------------------------------------------------------------


def trickle(pieces: list[tuple[float, bytes]]):
    """An ASGI receive that hands out each piece after its delay; the last one ends the body."""
    queue = list(pieces)

    async def receive() -> dict[str, Any]:
        delay, data = queue.pop(0)
        await asyncio.sleep(delay)
        return {"type": "http.request", "body": data, "more_body": bool(queue)}

    return receive


async def drain(body: RequestBody, busy: float = 0.0) -> int:
    got = 0
    async for chunk in body.chunks():
        got += len(chunk)
        if busy:
            await asyncio.sleep(busy)  # a slow store: this time is not the client's
    return got


async def test_a_body_slower_than_min_rate_ends_with_read_timeout():
    body = RequestBody(trickle([(0.05, b"x")] * 40), network_timeout=0.5, limit=1000, min_rate=100)
    started = asyncio.get_running_loop().time()
    got = await drain(body)
    elapsed = asyncio.get_running_loop().time() - started
    assert body.error is not None and body.error.code == "ERR_READ_TIMEOUT"
    assert "slower than 100 bytes/s" in body.error.message
    assert 0.4 < elapsed < 1.2 and 5 <= got <= 15


async def test_a_slow_but_steady_body_is_not_ended():
    # 25 bytes/s, never silent for a whole network timeout: above the default floor of 10 bytes/s.
    body = RequestBody(trickle([(0.04, b"x")] * 40), network_timeout=0.5, limit=1000, min_rate=10)
    assert await drain(body) == 40 and body.error is None and body.complete


async def test_without_min_rate_only_silence_counts():
    body = RequestBody(trickle([(0.05, b"x")] * 30), network_timeout=0.5, limit=1000, min_rate=0)
    assert await drain(body) == 30 and body.error is None


async def test_time_the_store_spends_is_not_held_against_the_client():
    # The client sends at once; the store takes 0.3 s per chunk: 3 s in all, 6 network timeouts, 10 bytes.
    body = RequestBody(trickle([(0.0, b"x")] * 10), network_timeout=0.5, limit=1000, min_rate=100)
    assert await drain(body, busy=0.3) == 10 and body.error is None


async def test_silence_still_ends_a_body():
    body = RequestBody(trickle([(0.0, b"abc"), (5.0, b"never")]), network_timeout=0.3, limit=1000, min_rate=0)
    started = asyncio.get_running_loop().time()
    assert await drain(body) == 3
    assert body.error is not None and body.error.code == "ERR_READ_TIMEOUT"
    assert asyncio.get_running_loop().time() - started < 1.5
