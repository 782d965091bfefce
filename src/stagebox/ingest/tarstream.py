"""Read a tarred bag once, as a stream, yielding only entries safe to unpack.

The ingest worker hashes and stages each regular file as it passes; nothing is
unpacked to disk and nothing is read twice. Plain, gzip, bzip2 and xz tars are
recognised by their first bytes. Every refused entry and every structural fault
(a truncated or corrupt archive, an empty one) becomes a :class:`Problem` in
:attr:`TarBag.problems`; bad input never raises.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, BinaryIO, Protocol, cast

from stagebox.ingest.bagtree import BagTree, shown
from stagebox.ingest.problems import Problem

CHUNK = 1 << 20
# A tar's serialization, in BagIt profile terms, by the compression its first bytes show.
SERIALIZATION = {None: "tar", "gzip": "tar.gz", "bzip2": "tar.bz2", "xz": "tar.xz"}

# What a damaged archive raises from tarfile and the decompressors. The source
# stream's own OSErrors are wrapped in _SourceFailed first, so they still raise.
_DAMAGE = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)

_REFUSED_TYPES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO (named pipe)",
}


class ByteSource(Protocol):
    """Anything with ``read(size) -> bytes``: a file, a socket file, a counting wrapper."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Member:
    """A regular file of the bag.

    ``path`` is relative to the bag's top-level directory, '/'-separated, as
    named in the tar (no Unicode normalisation), e.g. ``"data/a/b.txt"``.
    """

    path: str
    size: int
    mtime: float


class _SourceFailed(Exception):
    """The caller's stream raised OSError: not the archive's fault, so re-raised."""


class _Source(io.RawIOBase):
    """The caller's stream with its first bytes put back after sniffing."""

    def __init__(self, stream: ByteSource, head: bytes) -> None:
        self._stream = stream
        self._head = head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, handed on without a copy (an uncompressed tar is
        read straight through this)."""
        if self._head:
            n = len(self._head) if size is None or size < 0 else min(size, len(self._head))
            data, self._head = self._head[:n], self._head[n:]
            return data
        try:
            return self._stream.read(-1 if size is None else size)
        except OSError as exc:
            raise _SourceFailed() from exc


def _read_head(stream: ByteSource, size: int) -> bytes:
    head = b""
    try:
        while len(head) < size:
            data = stream.read(size - len(head))
            if not data:
                break
            head += data
    except OSError as exc:
        raise _SourceFailed() from exc
    return head


def _decompressed(stream: ByteSource) -> tuple[BinaryIO, str | None]:
    """The tar bytes of ``stream`` and the compression found, by magic number."""
    head = _read_head(stream, 6)
    raw = _Source(stream, head)
    source = cast(BinaryIO, io.BufferedReader(raw, CHUNK))
    if head.startswith(b"\x1f\x8b"):
        # GzipFile rather than tarfile's "r|gz": it checks the CRC and length.
        return cast(BinaryIO, gzip.GzipFile(fileobj=source, mode="rb")), "gzip"
    if head.startswith(b"BZh"):
        return cast(BinaryIO, bz2.BZ2File(source)), "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return cast(BinaryIO, lzma.LZMAFile(source)), "xz"
    return cast(BinaryIO, raw), None


# Why tarfile stopped reading headers, by the exception's name (typeshed lacks them).
_NO_END_MARKER = "missing end-of-archive marker"
_HEADER_ENDS = {
    "EOFHeaderError": "end",
    "EmptyHeaderError": _NO_END_MARKER,
    "TruncatedHeaderError": "cut inside a header",
}


class _Forward(io.RawIOBase):
    """The tar's bytes read strictly forward: what tarfile's stream mode does,
    without its re-joining buffer, which copied every byte several times.

    ``seek`` goes forward only (skipping an entry nobody read); a seek backwards
    is a bug in the reader, never something a tar can cause.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            data = self._raw.read()
        else:
            data = self._raw.read(size)
            while 0 < len(data) < size:  # a decompressor may answer short
                more = self._raw.read(size - len(data))
                if not more:
                    break
                data += more
        self._pos += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
        if target is None or target < self._pos:
            raise tarfile.StreamError("a tar stream is read forward only")
        while self._pos < target:
            if not self.read(min(CHUNK, target - self._pos)):
                break
        return self._pos


def _open_tar(tar_bytes: BinaryIO, events: list[str]) -> tarfile.TarFile:
    return tarfile.TarFile(
        fileobj=cast(IO[bytes], _Forward(tar_bytes)),
        mode="r",
        encoding="utf-8",
        errors="surrogateescape",
        tarinfo=_recording_tarinfo(events),
    )


def _recording_tarinfo(events: list[str]) -> type[tarfile.TarInfo]:
    """A TarInfo class noting why each header read ended.

    In stream mode tarfile ends iteration quietly on a missing end-of-archive
    marker, a partial header or a garbled one; only the all-zero block is a
    proper end. The note tells them apart.
    """

    class RecordingTarInfo(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> RecordingTarInfo:
            try:
                info = super().frombuf(buf, encoding, errors)
            except tarfile.HeaderError as exc:
                kind = type(exc).__name__
                events.append(_HEADER_ENDS.get(kind, f"corrupt header ({exc})"))
                raise
            events.append("header")
            return info

    return RecordingTarInfo


class _MemberReader(io.BufferedIOBase):
    """Exactly one member's bytes; a short or failed read marks the tar truncated."""

    def __init__(self, raw: IO[bytes], member: Member, owner: TarBag) -> None:
        self._raw = raw
        self._member = member
        self._owner = owner
        self.position = 0
        self.failed = False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        left = self._member.size - self.position
        if self.failed or left <= 0:
            return b""
        if size is None or size < 0:
            chunks = []
            while data := self.read(CHUNK):
                chunks.append(data)
            return b"".join(chunks)
        try:
            data = self._raw.read(min(size, left))
        except _SourceFailed as exc:
            raise exc.__cause__ from None  # type: ignore[misc]
        except _DAMAGE as exc:
            reason = str(exc) or type(exc).__name__
            self._fail(reason, cut=isinstance(exc, EOFError) or "unexpected end" in reason)
            return b""
        if not data:
            self._fail("unexpected end of data")
        self.position += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size if size >= 0 else CHUNK)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _fail(self, reason: str, *, cut: bool = True) -> None:
        self.failed = True
        name = shown(self._owner.top or "") + "/" + shown(self._member.path)
        self._owner._record_damage(
            f"it ends inside {name} after {self.position} of {self._member.size} bytes ({reason})",
            corrupt=not cut,
        )


class TarBag:
    """Reads a tarred bag once and yields its safe regular files.

    ``top`` is the bag's single top-level directory once an entry named it;
    ``dirs`` the directories seen under it (``"data"``, ``"data/a"``);
    ``problems`` every refused entry and structural error, in order;
    ``warnings`` what is odd but readable (a tar that ends after its last
    whole member without end-of-archive blocks, as DART writes them);
    ``compression`` is ``"gzip"``, ``"bzip2"``, ``"xz"`` or None, and
    ``serialization`` what a BagIt profile calls it (``"tar"``, ``"tar.gz"``...).
    ``name`` (default ``"<tar>"``) names the archive in structural problems.
    """

    def __init__(self, stream: ByteSource, name: str | None = None) -> None:
        self._stream = stream
        self.name = name or "<tar>"
        self._tree = BagTree()
        self.problems: list[Problem] = self._tree.problems
        self.warnings: list[Problem] = []
        self.compression: str | None = None
        self._started = False

    @property
    def top(self) -> str | None:
        return self._tree.top

    @property
    def serialization(self) -> str:
        """The archive's serialization as a profile's Accept-Serialization names it,
        known from the first bytes read."""
        return SERIALIZATION[self.compression]

    @property
    def dirs(self) -> set[str]:
        return self._tree.dirs

    def _record_damage(self, detail: str, *, corrupt: bool = False) -> None:
        """Record that the archive ends early (or is damaged); iteration stops."""
        kind = "corrupt tar" if corrupt else "truncated tar"
        self.problems.append(Problem(self.name, f"{kind}: {detail}"))

    def __iter__(self) -> Iterator[tuple[Member, BinaryIO]]:
        """Yield ``(member, reader)`` for each safe regular file, in tar order.

        The reader gives exactly ``member.size`` bytes and must be read, or
        abandoned, before the next item is asked for. Refused entries are
        recorded in :attr:`problems` and never yielded; iteration goes on past
        them. A truncated or corrupt tar records one problem and ends iteration:
        when the data of a yielded member is cut short, its reader returns what
        was there and then ``b""``. Only the caller's stream raising OSError
        raises here. A TarBag is iterated once.

        A tar (or a whole gzip, bzip2 or xz stream of one) that ends right after
        its last member's data and that data's padding to 512 bytes, with no
        end-of-archive blocks, is read to its end with one warning in
        :attr:`warnings`, as GNU tar reads it. A final padding block that is only
        partly there is truncation, as GNU tar says too ("Unexpected EOF in
        archive"); so are a cut inside a header and a compressed stream cut short.
        """
        if self._started:
            raise RuntimeError("a TarBag reads its stream once")
        self._started = True
        try:
            yield from self._members()
        except _SourceFailed as exc:
            raise exc.__cause__ from None  # type: ignore[misc]

    def _members(self) -> Iterator[tuple[Member, BinaryIO]]:
        events: list[str] = []
        try:
            tar_bytes, self.compression = _decompressed(self._stream)
            archive = _open_tar(tar_bytes, events)
        except _DAMAGE as exc:
            self._damaged(exc, None, events)
            return
        count = 0
        last: str | None = None
        with archive:
            while True:
                try:
                    info = archive.next()
                except _DAMAGE as exc:
                    self._damaged(exc, last, events)
                    return
                if info is None:
                    break
                # Stream mode would keep every header read in memory otherwise.
                archive.members = []  # type: ignore[attr-defined]
                count += 1
                last = info.name
                member = self._admit(info)
                if member is None:
                    continue
                raw = archive.extractfile(info)
                assert raw is not None  # a regular file always has a reader
                reader = _MemberReader(raw, member, self)
                yield member, cast(BinaryIO, reader)
                if reader.failed:
                    return
            if count == 0:
                self.problems.append(Problem(self.name, "empty tar: it has no entries"))
                return
            if events and events[-1] != "end":
                after = shown(last) if last is not None else "the start"
                if events[-1] == _NO_END_MARKER and archive.fileobj.tell() >= archive.offset:
                    # The last member is whole, padding and all, and nothing follows:
                    # DART writes its tars so; GNU tar and tarfile read them.
                    self.warnings.append(
                        Problem(
                            self.name,
                            f"no end-of-archive marker after {after} (as DART writes "
                            "tars): read to its end",
                        )
                    )
                else:
                    corrupt = events[-1].startswith("corrupt header")
                    self._record_damage(f"{events[-1]} after {after}", corrupt=corrupt)
                    return
            self._drain(tar_bytes)

    def _drain(self, tar_bytes: BinaryIO) -> None:
        # Reading to the end makes a compressor check its trailer (gzip's CRC).
        try:
            while tar_bytes.read(CHUNK):
                pass
        except _DAMAGE as exc:
            self._record_damage(
                f"the {self.compression} stream after the archive: {exc}",
                corrupt=not isinstance(exc, EOFError),
            )

    def _damaged(self, exc: BaseException, last: str | None, events: list[str]) -> None:
        if last is None and isinstance(exc, tarfile.ReadError) and "empty file" in str(exc):
            self.problems.append(Problem(self.name, "empty tar: it has no entries"))
            return
        where = f"after {shown(last)}" if last is not None else "at the start"
        if events and events[-1].startswith("corrupt header"):
            self._record_damage(f"{events[-1]} {where}", corrupt=True)
            return
        reason = str(exc) or type(exc).__name__
        cut = isinstance(exc, EOFError) or "unexpected end" in reason or "truncated" in reason
        self._record_damage(f"{reason} {where}", corrupt=not cut)

    def _admit(self, info: tarfile.TarInfo) -> Member | None:
        tree = self._tree
        if info.isdir():
            tree.admit_dir(info.name)
            return None
        if not info.isreg():
            kind = _REFUSED_TYPES.get(info.type)
            if kind is None:
                rule = f"unsupported entry type {info.type!r}"
            elif info.issym() or info.islnk():
                rule = f"{kind} to {shown(info.linkname)}"
            else:
                rule = kind
            tree.refuse(info.name, f"{rule}: a bag holds only regular files and directories")
            return None
        path = tree.admit_file(info.name)
        if path is None:
            return None
        return Member(path, info.size, float(info.mtime))
