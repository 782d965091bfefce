"""The endpoint's in-order hash: whatever order writes come in, the digest is the file's."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from stagebox.sftpd.fs import Tracker

PIECE = 1000


def pieces(data: bytes, size: int = PIECE) -> list[tuple[int, bytes]]:
    return [(o, data[o : o + size]) for o in range(0, len(data), size)]


def digest_after(writes: list[tuple[int, bytes]], size: int, limit: int = 1 << 20) -> str | None:
    """What the tracker says after ``writes``, or None where it needs a re-read.

    Where it needs one, the re-read (from the hashed prefix, of the bytes on disk)
    must then give the file's digest: that is checked too.
    """
    tracker = Tracker(("sha256",), limit)
    disk = bytearray(size)
    for offset, data in writes:
        disk[offset : offset + len(data)] = data
        tracker.feed(offset, data)
    done = tracker.complete(size)
    if done is not None:
        return done["sha256"]
    hasher = tracker.hasher
    if hasher is None:
        return None  # hashed again from the start: right by construction
    assert tracker.gap or hasher.length < size
    hasher.update(bytes(disk[hasher.length :]))
    assert hasher.hexdigests()["sha256"] == hashlib.sha256(bytes(disk)).hexdigest()
    return None


@pytest.fixture
def data() -> bytes:
    return os.urandom(50 * PIECE + 123)


def test_in_order_writes_need_no_reread(data: bytes) -> None:
    assert digest_after(pieces(data), len(data)) == hashlib.sha256(data).hexdigest()


def test_reversed_writes_within_the_buffer_need_no_reread(data: bytes) -> None:
    writes = list(reversed(pieces(data)))
    assert digest_after(writes, len(data)) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("seed", range(20))
def test_shuffled_writes_within_the_buffer_need_no_reread(data: bytes, seed: int) -> None:
    writes = pieces(data)
    random.Random(seed).shuffle(writes)
    assert digest_after(writes, len(data)) == hashlib.sha256(data).hexdigest()


def test_writes_past_the_buffer_fall_back_to_reading_the_rest(data: bytes) -> None:
    writes = pieces(data)
    writes = writes[1:] + writes[:1]  # everything waits for the first piece
    assert digest_after(writes, len(data), limit=10 * PIECE) is None


def test_a_rewrite_of_hashed_bytes_is_never_trusted(data: bytes) -> None:
    writes = [*pieces(data), (0, b"X" * PIECE), (0, data[:PIECE])]
    assert digest_after(writes, len(data)) is None


def test_overlapping_pieces_ahead_are_not_trusted(data: bytes) -> None:
    # Two different writes over one range ahead of the hash: the later one is on disk.
    ahead = [(2 * PIECE, b"A" * PIECE), (2 * PIECE + 500, data[2 * PIECE + 500 : 3 * PIECE + 500])]
    rest = [p for p in pieces(data) if p[0] >= 2 * PIECE]
    writes = [*ahead, (0, data[: 2 * PIECE]), *rest]
    assert digest_after(writes, len(data)) in (None, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("seed", range(30))
def test_random_mixes_of_sizes_and_orders_never_give_a_wrong_digest(seed: int) -> None:
    rng = random.Random(seed)
    data = os.urandom(rng.randrange(1, 40_000))
    writes = []
    offset = 0
    while offset < len(data):
        n = rng.randrange(1, 3000)
        writes.append((offset, data[offset : offset + n]))
        offset += n
    rng.shuffle(writes)
    # Some ranges written twice, some with other bytes first.
    for _ in range(rng.randrange(0, 4)):
        o, piece = rng.choice(writes)
        writes.insert(rng.randrange(len(writes) + 1), (o, os.urandom(len(piece))))
        writes.append((o, piece))
    result = digest_after(writes, len(data), limit=rng.choice([500, 5000, 1 << 20]))
    assert result in (None, hashlib.sha256(data).hexdigest())
