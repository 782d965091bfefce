"""Feed a request body to a synchronous consumer in large pieces, off the event loop."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

PIECE = 4 << 20


async def pump(request: Request, consume: Callable[[memoryview], None]) -> int:
    """Stream the body into ``consume`` in 4 MiB pieces, in order; returns bytes consumed.

    One piece is consumed (hashed and written, both of which release the GIL)
    on a worker thread while the event loop fills the other, so the socket
    never waits for the disk. The two pieces are page-aligned buffers reused
    for the whole body: no allocation per piece, and a direct-I/O writer can
    take them as they are.

    When the client goes away mid-body, what arrived is consumed before
    :class:`ClientDisconnect` is raised: a link that drops every few MiB must
    still move the upload forward, even when it drops before a whole piece.
    """
    buffers = (mmap.mmap(-1, PIECE), mmap.mmap(-1, PIECE))
    current, fill, total = 0, 0, 0
    pending: asyncio.Future[None] | None = None

    async def hand_over(size: int) -> None:
        nonlocal pending, total
        if pending is not None:
            await pending
        piece = memoryview(buffers[current])[:size]
        pending = asyncio.ensure_future(run_in_threadpool(consume, piece))
        total += size

    try:
        try:
            async for chunk in request.stream():
                view = memoryview(chunk)
                while view:
                    take = min(PIECE - fill, len(view))
                    buffers[current][fill : fill + take] = view[:take]
                    fill += take
                    view = view[take:]
                    if fill == PIECE:
                        await hand_over(fill)
                        current, fill = current ^ 1, 0
        except ClientDisconnect:
            if fill:
                await hand_over(fill)
            raise
        if fill:
            await hand_over(fill)
        if pending is not None:
            await pending
            pending = None
    finally:
        if pending is not None:  # the body broke off: let the last piece land first
            await asyncio.gather(pending, return_exceptions=True)
    return total
