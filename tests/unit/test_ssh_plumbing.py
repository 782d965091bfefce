"""The SSH plumbing's two byte-shufflers: packets gathered per loop turn, bundles
gathered into full write requests."""

from __future__ import annotations

import asyncio
import random

import pytest

from stagebox import ssh
from stagebox.transports.sftp import gather


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class FakeConnection:
    """What coalesce_writes hooks: asyncssh's ``_transport`` and ``_send``."""

    def __init__(self, transport: FakeTransport) -> None:
        self._transport: FakeTransport | None = transport

    def _send(self, data: bytes) -> None:
        raise AssertionError("replaced by coalesce_writes")


def test_packets_of_one_turn_go_out_in_one_write_in_order() -> None:
    async def main() -> FakeTransport:
        transport = FakeTransport()
        conn = FakeConnection(transport)
        ssh.coalesce_writes(conn)  # type: ignore[arg-type]
        for i in range(5):
            conn._send(b"p%d;" % i)
        await asyncio.sleep(0)
        conn._send(b"later;")
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(main()).writes == [b"p0;p1;p2;p3;p4;", b"later;"]


def test_the_last_packet_before_a_disconnect_still_goes_out() -> None:
    """asyncssh's disconnect sends its message, forgets the transport at once and
    aborts it a turn later: the message must reach the transport first."""

    async def main() -> FakeTransport:
        transport = FakeTransport()
        conn = FakeConnection(transport)
        ssh.coalesce_writes(conn)  # type: ignore[arg-type]
        conn._send(b"disconnect")
        conn._transport = None
        conn._send(b"after close")  # dropped, as asyncssh drops it
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(main()).writes == [b"disconnect"]


@pytest.mark.parametrize("seed", range(40))
def test_gather_keeps_every_byte_in_order_in_full_pieces(seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([1, 7, 4096, 256 << 10])
    parts = [rng.randbytes(rng.choice([0, 1, size - 1, size, size + 1, 3 * size]))
             for _ in range(rng.randrange(0, 30))]  # fmt: skip
    pieces = list(gather(parts, size))
    assert b"".join(pieces) == b"".join(parts)
    assert all(len(piece) == size for piece in pieces[:-1])
    assert all(pieces)


def test_a_bundle_of_small_files_is_a_few_writes() -> None:
    parts = [b"h" * 300] + [bytes([i % 256]) * 4096 for i in range(500)]
    pieces = list(gather(parts, 256 << 10))
    assert len(pieces) == 8  # 2,048,300 bytes in 256 KiB pieces
