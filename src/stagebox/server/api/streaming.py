"""Feed a request body to a synchronous consumer in large pieces, off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

PIECE = 1 << 20


async def pump(request: Request, consume: Callable[[bytearray], None]) -> int:
    """Stream the body into ``consume`` in ~1 MiB pieces, in order; returns bytes consumed.

    One piece is consumed (hashed and written, both of which release the GIL)
    on a worker thread while the event loop keeps receiving the next, so the
    socket never waits for the disk. At most two pieces are held at once.
    """
    total = 0
    buf = bytearray()
    pending: asyncio.Future[None] | None = None
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) >= PIECE:
                if pending is not None:
                    await pending
                piece, buf = buf, bytearray()
                total += len(piece)
                pending = asyncio.ensure_future(run_in_threadpool(consume, piece))
        if pending is not None:
            await pending
            pending = None
        if buf:
            await run_in_threadpool(consume, buf)
            total += len(buf)
    finally:
        if pending is not None:  # the body broke off: let the last piece land first
            await asyncio.gather(pending, return_exceptions=True)
    return total
