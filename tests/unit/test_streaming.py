"""The request-body pump: pieces in order, and what arrived is kept when the client goes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from stagebox.server.api.streaming import PIECE, pump


def a_request(chunks: list[bytes], disconnect: bool) -> Request:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    else:
        messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return Request({"type": "http", "method": "PATCH", "headers": []}, receive)


def consumed(request: Request) -> tuple[bytes, BaseException | None]:
    got = bytearray()
    error: BaseException | None = None

    async def go() -> None:
        nonlocal error
        try:
            await pump(request, lambda piece: got.extend(piece))
        except ClientDisconnect as exc:
            error = exc

    asyncio.run(go())
    return bytes(got), error


def test_a_whole_body_is_consumed_in_order() -> None:
    chunks = [bytes([i]) * (1 << 20) for i in range(9)]
    got, error = consumed(a_request(chunks, disconnect=False))
    assert error is None
    assert got == b"".join(chunks)


@pytest.mark.parametrize("size", [1, 3 << 20, PIECE, PIECE + 5, 2 * PIECE + (1 << 20)])
def test_a_body_cut_short_keeps_every_byte_that_arrived(size: int) -> None:
    # given a client that sends `size` bytes and goes away (less than a piece, or more)
    data = bytes(i % 251 for i in range(size))
    chunks = [data[i : i + 65536] for i in range(0, size, 65536)]
    # when the body is pumped
    got, error = consumed(a_request(chunks, disconnect=True))
    # then the disconnect is raised and every byte before it was consumed, in order
    assert isinstance(error, ClientDisconnect)
    assert got == data
