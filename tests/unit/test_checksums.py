import hashlib
import io

import pytest

from stagebox.checksums import MultiHasher


def test_feeding_once_gives_every_algorithm():
    data = b"stagebox" * 10_000
    hasher = MultiHasher(["sha256", "md5", "sha1", "sha512"])
    for i in range(0, len(data), 4096):
        hasher.update(data[i : i + 4096])
    assert hasher.hexdigests() == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha512": hashlib.sha512(data).hexdigest(),
    }
    assert hasher.length == len(data)


def test_copy_rolls_back_a_rejected_chunk():
    hasher = MultiHasher()
    hasher.update(b"good")
    snapshot = hasher.copy()
    hasher.update(b"bad chunk")
    assert snapshot.hexdigest("sha256") == hashlib.sha256(b"good").hexdigest()
    assert snapshot.length == 4


def test_update_from_stops_at_the_limit():
    hasher = MultiHasher()
    assert hasher.update_from(io.BytesIO(b"abcdef"), limit=3) == 3
    assert hasher.hexdigest("sha256") == hashlib.sha256(b"abc").hexdigest()


def test_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="crc"):
        MultiHasher(["crc"])
