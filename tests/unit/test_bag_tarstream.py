"""TarBag: a tarred bag read once as a stream, unsafe entries refused, damage reported."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from stagebox.ingest.tarstream import Member, TarBag
from tests.bags import TarBuilder, make_bag_dir, to_tar


def read_all(source: bytes | Path, name: str = "bag.tar") -> tuple[dict[str, bytes], TarBag]:
    data = source.read_bytes() if isinstance(source, Path) else source
    tar = TarBag(io.BytesIO(data), name=name)
    files = {member.path: reader.read() for member, reader in tar}
    return files, tar


def rules(tar: TarBag) -> list[str]:
    return [str(p) for p in tar.problems]


def test_a_good_bag_streams_every_file_relative_to_its_top_directory(tmp_path):
    bag_dir = make_bag_dir(tmp_path, "bag1")

    files, tar = read_all(to_tar(bag_dir))

    assert tar.problems == []
    assert tar.top == "bag1"
    assert {"data", "data/sub", "data/sub/deeper", "data/café"} <= tar.dirs
    assert files["data/a.txt"] == b"alpha\n"
    assert files["data/empty.dat"] == b""
    assert files["data/café/naïve über.txt"] == (bag_dir / "data/café/naïve über.txt").read_bytes()
    assert "bagit.txt" in files and "manifest-sha256.txt" in files


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_compressed_tars_are_recognised_by_their_first_bytes(tmp_path, compression):
    bag_dir = make_bag_dir(tmp_path, "bag1")
    plain, _ = read_all(to_tar(bag_dir))

    files, tar = read_all(to_tar(bag_dir, tmp_path / "no-suffix", compression=compression))

    assert tar.problems == []
    assert tar.compression == {"gz": "gzip", "bz2": "bzip2", "xz": "xz"}[compression]
    assert files == plain


def test_members_carry_size_and_mtime_and_names_are_not_normalised(tmp_path):
    nfd = "data/cafe\u0301.txt"
    builder = TarBuilder(tmp_path / "t.tar").dir("bag").file(f"bag/{nfd}", b"12345")

    tar = TarBag(io.BytesIO(builder.close().read_bytes()))
    items = [(member, reader.read()) for member, reader in tar]

    assert [(m.path, m.size, d) for m, d in items] == [(nfd, 5, b"12345")]
    assert isinstance(items[0][0], Member) and isinstance(items[0][0].mtime, float)


def test_a_leading_dot_slash_and_doubled_slashes_name_the_same_places(tmp_path):
    builder = TarBuilder(tmp_path / "t.tar").dir("./bag/").file("./bag//data/./a.txt")

    files, tar = read_all(builder.close())

    assert tar.problems == [] and tar.top == "bag"
    assert list(files) == ["data/a.txt"]


REFUSALS = [
    ("symlink", lambda b: b.special("bag/data/link", tarfile.SYMTYPE, "/etc/passwd"),
     "bag/data/link: symlink to /etc/passwd: a bag holds only regular files and directories"),
    ("hardlink", lambda b: b.special("bag/data/hard", tarfile.LNKTYPE, "bag/data/a.txt"),
     "bag/data/hard: hard link to bag/data/a.txt: a bag holds only regular files"),
    ("character device", lambda b: b.special("bag/data/null", tarfile.CHRTYPE),
     "bag/data/null: character device: a bag holds only regular files"),
    ("block device", lambda b: b.special("bag/data/sda", tarfile.BLKTYPE),
     "bag/data/sda: block device: a bag holds only regular files"),
    ("fifo", lambda b: b.special("bag/data/pipe", tarfile.FIFOTYPE),
     "bag/data/pipe: FIFO (named pipe): a bag holds only regular files"),
    ("unknown type", lambda b: b.special("bag/data/vol", b"V"),
     "bag/data/vol: unsupported entry type b'V'"),
    ("absolute path", lambda b: b.file("/etc/cron.d/evil"),
     "/etc/cron.d/evil: absolute path: the entry would land outside the bag"),
    ("dot-dot", lambda b: b.file("bag/data/../../evil.txt"),
     "bag/data/../../evil.txt: '..' in the path: the entry would land outside the bag"),
    ("harmless dot-dot", lambda b: b.file("bag/data/x/../y.txt"),
     "bag/data/x/../y.txt: '..' in the path"),
    ("not UTF-8", lambda b: b.file("bag/data/caf\udce9.txt"),
     "bag/data/caf\\xe9.txt: the name is not valid UTF-8"),
    ("second top-level directory", lambda b: b.file("other/data/x.txt"),
     "other/data/x.txt: two top-level directories: bag and other"),
    ("file at top level", lambda b: b.file("loose.txt"),
     "loose.txt: entry outside the bag's top-level directory"),
    ("duplicate", lambda b: b.file("bag/data/a.txt", b"second copy"),
     "bag/data/a.txt: duplicate entry: the path appeared earlier; this copy is refused"),
    ("file under a file", lambda b: b.file("bag/data/a.txt/inner"),
     "bag/data/a.txt/inner: the path is both a file and a directory"),
]  # fmt: skip


@pytest.mark.parametrize("add, expected", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_unsafe_entries_are_refused_by_name_and_rule_and_reading_goes_on(tmp_path, add, expected):
    builder = TarBuilder(tmp_path / "t.tar").dir("bag").file("bag/data/a.txt", b"first")
    add(builder)
    builder.file("bag/bagit.txt", b"after the bad entry\n")

    files, tar = read_all(builder.close())

    assert len(tar.problems) == 1
    assert rules(tar)[0].startswith(expected)
    assert files["data/a.txt"] == b"first"  # a duplicate never replaces the first copy
    assert "bagit.txt" in files  # entries after the refused one still arrive
    assert len(files) == 2


@pytest.mark.parametrize("name", ["bell\x07.txt", "two\nlines.txt", "c1\x85.txt"])
def test_control_characters_in_names_are_admitted_as_rfc_8493_allows(tmp_path, name):
    # (a profile may refuse them: APTrust's does, see test_bag_shipped_profiles.py)
    builder = TarBuilder(tmp_path / "t.tar").dir("bag").file(f"bag/data/{name}", b"odd")

    files, tar = read_all(builder.close())

    assert tar.problems == []
    assert files == {f"data/{name}": b"odd"}


def test_every_problem_is_collected_not_only_the_first(tmp_path):
    builder = (
        TarBuilder(tmp_path / "t.tar")
        .file("bag/data/ok.txt")
        .special("bag/data/l1", tarfile.SYMTYPE, "x")
        .special("bag/data/p", tarfile.FIFOTYPE)
        .file("bag/../x")
        .file("other/y")
        .file("other/z")  # the second top is reported once
    )

    files, tar = read_all(builder.close())

    assert list(files) == ["data/ok.txt"]
    assert len(tar.problems) == 4


def test_pax_headers_and_gnu_long_names_are_read_through(tmp_path):
    long_name = "bag/data/" + "d" * 120 + "/" + "f" * 120 + ".txt"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        dest = tmp_path / f"t{fmt}.tar"
        files, tar = read_all(TarBuilder(dest, format=fmt).file(long_name, b"long").close())
        assert tar.problems == []
        assert files == {long_name.removeprefix("bag/"): b"long"}


@pytest.fixture
def two_file_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, size in (("bag/a", 3000), ("bag/b", 100)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    return buffer.getvalue()


# Offsets into two_file_tar: header a 0-512, data a 512-3584, header b 3584-4096,
# data b 4096-4196 (padded to 4608), end-of-archive marker 4608-5632.
@pytest.mark.parametrize(
    "cut, arrived, detail",
    [
        (100, {}, "truncated header at the start"),
        (1512, {"a": 0}, "it ends inside bag/a after 0 of 3000 bytes"),
        (3700, {"a": 3000}, "cut inside a header after bag/a"),
        (4150, {"a": 3000, "b": 0}, "it ends inside bag/b"),
        # b's bytes are all there, but not the padding of its last block
        (4196, {"a": 3000, "b": 100}, "unexpected end of data after bag/b"),
        (4607, {"a": 3000, "b": 100}, "unexpected end of data after bag/b"),
        (4808, {"a": 3000, "b": 100}, "cut inside a header after bag/b"),
    ],
)
def test_a_truncated_tar_is_one_problem_wherever_it_is_cut(two_file_tar, cut, arrived, detail):
    files, tar = read_all(two_file_tar[:cut])

    assert {path: len(data) for path, data in files.items()} == arrived
    assert len(tar.problems) == 1
    assert str(tar.problems[0]).startswith(f"bag.tar: truncated tar: {detail}")


@pytest.mark.parametrize("cut, arrived", [(3584, {"a": 3000}), (4608, {"a": 3000, "b": 100})])
def test_a_tar_that_ends_after_a_whole_member_is_read_with_a_warning(two_file_tar, cut, arrived):
    # as DART writes its tars: no end-of-archive blocks after the last member
    files, tar = read_all(two_file_tar[:cut])

    assert {path: len(data) for path, data in files.items()} == arrived
    assert tar.problems == []
    last = "bag/" + sorted(arrived)[-1]
    assert [str(w) for w in tar.warnings] == [
        f"bag.tar: no end-of-archive marker after {last} (as DART writes tars): read to its end"
    ]


def test_a_gzipped_tar_without_end_blocks_is_read_and_its_crc_still_checked(two_file_tar):
    files, tar = read_all(gzip.compress(two_file_tar[:4608]))
    corrupt = bytearray(gzip.compress(two_file_tar[:4608]))
    corrupt[-6] ^= 0xFF
    _, bad_crc = read_all(bytes(corrupt))

    assert len(files) == 2 and tar.problems == [] and len(tar.warnings) == 1
    assert rules(bad_crc)[0].startswith("bag.tar: corrupt tar:"), rules(bad_crc)


def test_garbage_after_the_last_member_is_an_error(two_file_tar):
    files, tar = read_all(two_file_tar[:4608] + b"garbage!" * 64)

    assert len(files) == 2
    assert rules(tar)[0].startswith("bag.tar: corrupt tar: corrupt header"), rules(tar)
    assert tar.warnings == []


def test_a_header_with_a_bad_checksum_after_a_member_is_an_error(two_file_tar):
    spoilt = bytearray(two_file_tar[:4608])  # no end blocks, so only the checksum tells
    spoilt[3584 + 148] ^= 0x01  # the checksum field of b's header

    files, tar = read_all(bytes(spoilt))

    assert list(files) == ["a"] and tar.warnings == []
    assert rules(tar) == ["bag.tar: corrupt tar: corrupt header (bad checksum) after bag/a"]


@pytest.mark.parametrize("cut", [-4, -8], ids=["part of the trailer", "no trailer"])
def test_a_gzip_stream_cut_short_is_truncation_even_without_end_blocks(two_file_tar, cut):
    gz = gzip.compress(two_file_tar[:4608])

    files, tar = read_all(gz[:cut])

    assert len(files) == 2 and tar.warnings == []
    assert rules(tar)[0].startswith("bag.tar: truncated tar:"), rules(tar)


def test_a_gzipped_tar_whose_last_padding_is_cut_is_truncation(two_file_tar):
    files, tar = read_all(gzip.compress(two_file_tar[:4300]))

    assert len(files) == 2 and tar.warnings == []
    assert rules(tar) == ["bag.tar: truncated tar: unexpected end of data after bag/b"]


def test_a_tar_cut_after_its_end_marker_is_whole(two_file_tar):
    files, tar = read_all(two_file_tar[:5120])  # one zero block is enough for tar

    assert tar.problems == [] and len(files) == 2


def test_a_reader_that_is_cut_short_says_so_before_iteration_ends(two_file_tar):
    tar = TarBag(io.BytesIO(two_file_tar[:4150]))
    got = []
    for member, reader in tar:
        chunks = []
        while chunk := reader.read(64):
            chunks.append(chunk)
        got.append((member.path, member.size, sum(map(len, chunks))))

    assert got == [("a", 3000, 3000), ("b", 100, 0)]
    assert rules(tar) == [
        "<tar>: truncated tar: it ends inside bag/b after 0 of 100 bytes (unexpected end of data)"
    ]


def test_a_reader_left_unread_is_skipped(two_file_tar):
    tar = TarBag(io.BytesIO(two_file_tar))

    paths = [member.path for member, _ in tar]

    assert paths == ["a", "b"] and tar.problems == []


def test_a_truncated_or_corrupt_gzip_stream_is_reported(two_file_tar):
    gz = gzip.compress(two_file_tar)
    corrupt = bytearray(gz)
    corrupt[-6] ^= 0xFF  # the CRC

    _, cut = read_all(gz[: len(gz) // 2])
    _, no_trailer = read_all(gz[:-4])
    _, bad_crc = read_all(bytes(corrupt))

    assert rules(cut)[0].startswith("bag.tar: truncated tar:")
    assert rules(no_trailer)[0].startswith("bag.tar: truncated tar: the gzip stream")
    assert rules(bad_crc)[0].startswith("bag.tar: corrupt tar: the gzip stream")
    assert all(len(t.problems) == 1 for t in (cut, no_trailer, bad_crc))


@pytest.mark.parametrize("data", [b"", b"\0" * 10240], ids=["no bytes", "only zeros"])
def test_an_empty_tar_is_a_problem(data):
    files, tar = read_all(data)

    assert files == {}
    assert rules(tar) == ["bag.tar: empty tar: it has no entries"]


def test_something_that_is_not_a_tar_is_a_problem():
    _, tar = read_all(b"PK\x03\x04 this is a zip, not a tar" * 40)

    assert rules(tar) == ["bag.tar: corrupt tar: corrupt header (invalid header) at the start"]


def test_the_callers_own_read_errors_are_raised_not_blamed_on_the_tar(two_file_tar):
    class FailingDisk(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 4000:
                raise OSError(5, "Input/output error")
            return super().read(size)

    with pytest.raises(OSError, match="Input/output error"):
        for _, reader in TarBag(FailingDisk(two_file_tar)):
            reader.read()


def test_a_tarbag_is_read_once(two_file_tar):
    tar = TarBag(io.BytesIO(two_file_tar))
    list(tar)

    with pytest.raises(RuntimeError):
        list(tar)


def test_two_thousand_files_stream_through_in_bounded_memory(tmp_path):
    dest = tmp_path / "many.tar"
    with tarfile.open(dest, "w") as out:
        for i in range(2000):
            info = tarfile.TarInfo(f"bag/data/{i // 100}/file-{i}.bin")
            info.size = 4096
            out.addfile(info, io.BytesIO(bytes([i % 256]) * 4096))
        big = tarfile.TarInfo("bag/data/big.bin")
        big.size = 24 << 20
        out.addfile(big, io.BytesIO(bytes(big.size)))

    tracemalloc.start()
    with dest.open("rb") as f:
        tar = TarBag(f)
        total = count = 0
        for _, reader in tar:
            while chunk := reader.read(1 << 20):
                total += len(chunk)
            count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert tar.problems == [] and count == 2001
    assert total == 2000 * 4096 + (24 << 20)
    assert peak < 8 << 20  # a few 1 MiB chunks, not the 24 MiB file nor 2,000 headers
