"""Feed a request body to a synchronous consumer in large pieces, off the event loop."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

PIECE = 1 << 20


async def pump(request: Request, consume: Callable[[bytearray], None]) -> int:
    """Stream the body into ``consume`` in ~1 MiB pieces; returns bytes consumed.

    Hashing and disk writes run on a worker thread (both release the GIL), so
    the event loop keeps reading the socket meanwhile.
    """
    total = 0
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) >= PIECE:
            piece, buf = buf, bytearray()
            await run_in_threadpool(consume, piece)
            total += len(piece)
    if buf:
        await run_in_threadpool(consume, buf)
        total += len(buf)
    return total
