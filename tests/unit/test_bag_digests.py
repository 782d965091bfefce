"""BagHasher and HashLane: all four digests equal hashlib's, whatever the chunks and threads.

md5 and sha512 of a chunk of at least SPLIT_AT bytes are hashed on the lane's
thread, the rest on the caller's; the digests must come out as if one thread had
hashed every byte in order. The streams here mix chunks just under, at and just
over SPLIT_AT, end most of them on a small chunk (what a tar entry's last read
gives), and share one lane between many hashers, one after another as the stage
does, and from several threads at once.
"""

from __future__ import annotations

import hashlib
import random
import threading

import pytest

from stagebox.checksums import BUFFER_SIZE
from stagebox.ingest.bagit import ALGORITHMS
from stagebox.ingest.digests import SPLIT_AT, BagHasher, HashLane

# One block of random bytes; every chunk is a slice of it at a random offset.
SOURCE = random.Random(20240601).randbytes(2 * BUFFER_SIZE)

AROUND = (SPLIT_AT - 1, SPLIT_AT, SPLIT_AT + 1)
SMALL = (0, 1, 7, 4096, SPLIT_AT // 2, SPLIT_AT - 1)
BIG = (SPLIT_AT, SPLIT_AT + 1, 3 * SPLIT_AT, BUFFER_SIZE)


def chunks_of(sizes: list[int], rng: random.Random) -> list[bytes]:
    out = []
    for size in sizes:
        start = rng.randrange(len(SOURCE) - size + 1)
        out.append(SOURCE[start : start + size])
    return out


def random_sizes(rng: random.Random) -> list[int]:
    """A few big chunks and around-the-split ones in any order, most often a small last one."""
    sizes = [rng.choice(BIG + AROUND + SMALL) for _ in range(rng.randint(1, 5))]
    if rng.random() < 0.8:
        sizes.append(rng.choice(SMALL))
    return sizes


def expected(chunks: list[bytes]) -> dict[str, str]:
    data = b"".join(chunks)
    return {name: hashlib.new(name, data).hexdigest() for name in ALGORITHMS}


def hashed(lane: HashLane | None, chunks: list[bytes]) -> dict[str, str]:
    hasher = BagHasher(lane)
    for chunk in chunks:
        hasher.update(chunk)
    assert hasher.length == sum(map(len, chunks))
    return hasher.hexdigests()


SEQUENCES = {
    "under": [SPLIT_AT - 1],
    "at": [SPLIT_AT],
    "over": [SPLIT_AT + 1],
    "at_then_one_byte": [SPLIT_AT, 1],
    "over_then_under": [SPLIT_AT + 1, SPLIT_AT - 1],
    "under_then_at": [SPLIT_AT - 1, SPLIT_AT],
    "around_in_turn": [SPLIT_AT - 1, SPLIT_AT, SPLIT_AT + 1, SPLIT_AT - 1, SPLIT_AT, 1],
    "big_small_big_small": [BUFFER_SIZE, 100, BUFFER_SIZE, SPLIT_AT - 1],
    "full_reads_then_tail": [BUFFER_SIZE, BUFFER_SIZE, 12345],
    "big_then_empty_then_small": [BUFFER_SIZE, 0, 10],
    "small_then_big": [10, SPLIT_AT // 2, BUFFER_SIZE],
}


@pytest.mark.parametrize("sizes", list(SEQUENCES.values()), ids=list(SEQUENCES))
def test_chunks_around_the_split_hash_as_hashlib_does(sizes):
    rng = random.Random(len(sizes))
    with HashLane() as lane:
        for _ in range(15):
            chunks = chunks_of(sizes, rng)
            assert hashed(lane, chunks) == expected(chunks)
    chunks = chunks_of(sizes, rng)
    assert hashed(None, chunks) == expected(chunks)


def test_many_streams_one_after_another_share_one_lane():
    """The stage's pattern: one lane for the whole tar, one hasher per entry."""
    rng = random.Random(1)
    streams = [chunks_of(random_sizes(rng), rng) for _ in range(250)]
    with HashLane() as lane:
        wrong = [i for i, chunks in enumerate(streams) if hashed(lane, chunks) != expected(chunks)]
    assert wrong == []


def test_hashers_fed_in_turn_on_one_thread_share_one_lane():
    """Several hashers open at once, each fed a chunk in turn, then read in any order."""
    rng = random.Random(2)
    streams = [chunks_of(random_sizes(rng), rng) for _ in range(40)]
    with HashLane() as lane:
        hashers = [BagHasher(lane) for _ in streams]
        for step in range(max(map(len, streams))):
            for hasher, chunks in zip(hashers, streams, strict=True):
                if step < len(chunks):
                    hasher.update(chunks[step])
        order = list(range(len(streams)))
        rng.shuffle(order)
        wrong = [i for i in order if hashers[i].hexdigests() != expected(streams[i])]
    assert wrong == []


def test_hashers_on_several_threads_share_one_lane():
    rng = random.Random(3)
    per_thread = [[chunks_of(random_sizes(rng), rng) for _ in range(40)] for _ in range(4)]
    wrong: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(per_thread))

    def work(lane: HashLane, t: int) -> None:
        try:
            start.wait()
            for i, chunks in enumerate(per_thread[t]):
                if hashed(lane, chunks) != expected(chunks):
                    wrong.append((t, i))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    with HashLane() as lane:
        threads = [threading.Thread(target=work, args=(lane, t)) for t in range(len(per_thread))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert wrong == []


def test_digests_can_be_read_twice_and_hashing_goes_on_after():
    rng = random.Random(4)
    first, second = chunks_of([BUFFER_SIZE, 5], rng), chunks_of([SPLIT_AT, 3], rng)
    with HashLane() as lane:
        hasher = BagHasher(lane)
        for chunk in first:
            hasher.update(chunk)
        assert hasher.hexdigests() == hasher.hexdigests() == expected(first)
        for chunk in second:
            hasher.update(chunk)
        assert hasher.hexdigests() == expected(first + second)
