"""A storage box that is a directory on a local or mounted filesystem.

Object metadata lives in extended attributes ``user.stagebox.<name>`` (UTF-8
values). On a filesystem that keeps no user extended attributes (ENOTSUP),
metadata is dropped, with one debug log line per box, and reads back empty.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import shutil
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from stagebox.checksums import BUFFER_SIZE
from stagebox.errors import InvalidName, KeyEscapesRoot, NotFound, StorageError
from stagebox.names import clean_directory
from stagebox.storage.base import (
    ObjectInfo,
    PromoteResult,
    StagedWriter,
    StorageBackend,
    check_metadata,
)

log = logging.getLogger(__name__)
# Writes expected to be at least this large bypass the page cache (O_DIRECT).
DIRECT_MIN = 8 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _fsync_at(name: str, dir_fd: int) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


XATTR_PREFIX = "user.stagebox."
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)


class _Metadata:
    """What a local writer does with its metadata when it closes: set it when it
    was given, or changed, or the write began at byte 0 (it replaces the object,
    so an earlier object's metadata goes)."""

    def __init__(
        self, backend: LocalBackend, key: str, initial: dict[str, str], replace: bool
    ) -> None:
        self.backend = backend
        self.key = key
        self.initial = initial
        self.replace = replace

    def apply(self, fd: int, metadata: dict[str, str]) -> None:
        if self.replace or metadata != self.initial:
            self.backend.set_metadata(fd, self.key, metadata)


class _LocalWriter(StagedWriter):
    def __init__(self, fd: int, offset: int, size: int | None, pending: _Metadata) -> None:
        self._fd = fd
        self._start = offset
        self._pos = offset
        self._pending = pending
        self.metadata = dict(pending.initial)
        # Truncating a file that is already that size is not free: ext4 takes a
        # truncate-then-write as a file being replaced and flushes it on close.
        if size != offset:
            os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._pos += n

    def tell(self) -> int:
        return self._pos

    def discard_to(self, offset: int) -> None:
        if not self._start <= offset <= self._pos:
            raise StorageError(
                f"cannot discard to {offset}: writer spans {self._start}..{self._pos}"
            )
        os.ftruncate(self._fd, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._pos = offset

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self._pending.apply(self._fd, self.metadata)
            finally:
                os.close(self._fd)
                self._fd = -1


ALIGN = 4096
DIRECT_BUFFER = 1 << 20


class _DirectWriter(StagedWriter):
    """Writes large uploads with O_DIRECT through an aligned buffer.

    Bytes bypass the page cache: far less CPU per byte than buffered writes
    (page allocation dominates those), nothing dirty left for a later fsync to
    flush, and no cache pollution. The unaligned head and tail go through the
    ordinary descriptor; the kernel keeps the two views coherent.
    """

    def __init__(self, fd: int, direct_fd: int, offset: int, pending: _Metadata) -> None:
        self._fd = fd
        self._direct = direct_fd
        self._start = offset
        self._pending = pending
        self.metadata = dict(pending.initial)
        self._flushed = offset  # bytes at or past this offset are still in the buffer
        self._buf = mmap.mmap(-1, DIRECT_BUFFER)
        self._view = memoryview(self._buf)
        self._used = 0
        self._zero_copy = True
        os.ftruncate(fd, offset)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._flushed % ALIGN and self._used == 0:
            head = min(len(view), ALIGN - self._flushed % ALIGN)
            self._pwrite_all(self._fd, view[:head], self._flushed)
            self._flushed += head
            view = view[head:]
        if self._used == 0 and len(view) >= ALIGN and self._zero_copy:
            # A page-aligned caller buffer (the server's receive buffers are)
            # goes to the disk as it is; anything else is copied first.
            whole = len(view) - len(view) % ALIGN
            try:
                self._pwrite_all(self._direct, view[:whole], self._flushed)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._zero_copy = False
            else:
                self._flushed += whole
                view = view[whole:]
        while view:
            take = min(len(view), DIRECT_BUFFER - self._used)
            self._view[self._used : self._used + take] = view[:take]
            self._used += take
            view = view[take:]
            if self._used == DIRECT_BUFFER:
                self._flush_aligned()

    def _flush_aligned(self) -> None:
        aligned = self._used - self._used % ALIGN
        if aligned:
            self._pwrite_all(self._direct, self._view[:aligned], self._flushed)
            self._flushed += aligned
            rest = self._used - aligned
            self._view[:rest] = self._view[aligned : self._used]
            self._used = rest

    @staticmethod
    def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n

    def tell(self) -> int:
        return self._flushed + self._used

    def discard_to(self, offset: int) -> None:
        if not self._start <= offset <= self.tell():
            raise StorageError(
                f"cannot discard to {offset}: writer spans {self._start}-{self.tell()}"
            )
        if offset >= self._flushed:
            self._used = offset - self._flushed
        else:
            os.ftruncate(self._fd, offset)
            self._flushed, self._used = offset, 0

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self._flush_aligned()
            if self._used:  # the unaligned tail
                self._pwrite_all(self._fd, self._view[: self._used], self._flushed)
                self._flushed += self._used
                self._used = 0
            self._pending.apply(self._fd, self.metadata)
        finally:
            self._view.release()
            self._buf.close()
            os.close(self._direct)
            os.close(self._fd)
            self._fd = -1


class LocalBackend(StorageBackend):
    """Keys map to files under ``root``; no symlink is ever followed.

    Every access walks the key's directories from the root one component at a
    time with ``O_NOFOLLOW`` and opens the final name relative to its parent's
    descriptor, so a symlink planted anywhere in the tree (even between a check
    and a use) cannot lead outside the box.

    Staged writes are not fsynced (a restart re-reads whatever reached the disk).
    With ``durable``, promotion fsyncs the file and its new directory before the
    catalog records it stored; ``flush()`` syncs the filesystem once for a batch.
    """

    def __init__(
        self,
        name: str,
        root: Path | str,
        durable: bool = True,
        direct_io: bool = True,
        dir_mode: int | None = None,
    ) -> None:
        self.name = name
        # Set exactly on directories this backend creates (the umask would
        # narrow a plain mkdir): 2770 in a staging root shared with an sftp account.
        self.dir_mode = dir_mode
        self.direct_io = direct_io
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root = self.root.resolve()
        self.durable = durable
        self.xattrs = True  # until the filesystem says it keeps none
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"LocalBackend({self.name!r}, {str(self.root)!r})"

    def _split(self, key: str) -> tuple[list[str], str]:
        try:
            clean = clean_directory(key, "key")
        except InvalidName as exc:
            raise KeyEscapesRoot(f"{self.name}: key {key!r} is not a safe relative path") from exc
        if clean == "":
            raise KeyEscapesRoot(f"{self.name}: empty key")
        parts = clean.split("/")
        return parts[:-1], parts[-1]

    def path(self, key: str) -> Path:
        """Where ``key`` lives, for messages and operators (access goes through fds)."""
        dirs, name = self._split(key)
        return self.root.joinpath(*dirs, name)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Within this block (and this thread) directory descriptors are reused.

        One bundle touches a handful of directories for hundreds of files;
        walking each once instead of once per file is most of the per-file
        cost. The cache lives only as long as the block.
        """
        outer = getattr(self._local, "dirs", None)
        if outer is not None:
            yield
            return
        self._local.dirs = {}
        try:
            yield
        finally:
            for fd in self._local.dirs.values():
                os.close(fd)
            self._local.dirs = None

    @contextmanager
    def _parent(self, dirs: list[str], create: bool = False) -> Iterator[int]:
        """A descriptor of the key's directory, reached without following symlinks."""
        cache: dict[tuple[str, ...], int] | None = getattr(self._local, "dirs", None)
        if cache is not None:
            key = tuple(dirs)
            fd = cache.get(key)
            if fd is None:
                fd = self._walk(dirs, create)
                cache[key] = fd
            yield fd
            return
        fd = self._walk(dirs, create)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def directory(self, dirs: list[str]) -> Iterator[int]:
        """A descriptor of the directory ``dirs`` (components of a cleaned key),
        reached from the root without following symlinks (the sftp endpoint's)."""
        with self._parent(dirs) as fd:
            yield fd

    def _walk(self, dirs: list[str], create: bool) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.root, flags)
        try:
            for part in dirs:
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise NotFound(f"{self.name}: no such key under {part}") from None
                    created = False
                    with suppress(FileExistsError):
                        os.mkdir(part, 0o770, dir_fd=fd)
                        created = True
                    child = os.open(part, flags, dir_fd=fd)
                    if created and self.dir_mode is not None:
                        os.fchmod(child, self.dir_mode)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise KeyEscapesRoot(
                            f"{self.name}: {part} is a symlink or not a directory"
                        ) from exc
                    raise StorageError(f"{self.name}: cannot open {part}: {exc.strerror}") from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_at(self, dir_fd: int, name: str, flags: int) -> int:
        try:
            # O_NONBLOCK: a FIFO planted at the name must not hang the open.
            fd = os.open(
                name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o660, dir_fd=dir_fd
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeyEscapesRoot(f"{self.name}: {name} is a symlink") from exc
            if exc.errno == errno.ENOENT:
                raise NotFound(f"{self.name}: no such key {name}") from exc
            raise StorageError(f"{self.name}: cannot open {name}: {exc.strerror}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(f"{self.name}: {name} is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def open_write(
        self,
        key: str,
        offset: int = 0,
        size_hint: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StagedWriter:
        dirs, name = self._split(key)
        given = None if metadata is None else check_metadata(metadata)
        with self._parent(dirs, create=True) as dir_fd:
            fd = self._open_at(dir_fd, name, os.O_WRONLY | os.O_CREAT)
            size = os.fstat(fd).st_size
            if offset > size:
                os.close(fd)
                raise StorageError(
                    f"{self.name}: cannot write {key} at {offset}, only {size} bytes"
                )
            if given is None and offset:
                try:
                    given = self._read_metadata(fd, key)
                except BaseException:
                    os.close(fd)
                    raise
                pending = _Metadata(self, key, given, replace=False)
            else:
                pending = _Metadata(self, key, given or {}, replace=True)
            if self.direct_io and size_hint is not None and size_hint - offset >= DIRECT_MIN:
                try:
                    direct = os.open(
                        name,
                        os.O_WRONLY | os.O_DIRECT | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dir_fd,
                    )
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        os.close(fd)
                        raise StorageError(f"{self.name}: cannot open {key}: {exc}") from exc
                    log.info("%s: O_DIRECT not supported here; using buffered writes", self.name)
                    self.direct_io = False
                else:
                    return _DirectWriter(fd, direct, offset, pending)
        return _LocalWriter(fd, offset, size, pending)

    def _no_xattrs(self, exc: OSError) -> bool:
        """Whether ``exc`` says this filesystem keeps no user extended attributes."""
        if exc.errno not in _NO_XATTRS:
            return False
        if self.xattrs:
            log.debug(
                "%s: no extended attributes under %s; metadata is dropped", self.name, self.root
            )
            self.xattrs = False
        return True

    def set_metadata(self, fd: int, key: str, metadata: Mapping[str, str]) -> None:
        """Make ``metadata`` the whole metadata of the open file ``fd``."""
        metadata = check_metadata(metadata)
        if not self.xattrs:
            return
        try:
            for attr in os.listxattr(fd):
                if attr.startswith(XATTR_PREFIX) and attr[len(XATTR_PREFIX) :] not in metadata:
                    os.removexattr(fd, attr)
            for name, value in metadata.items():
                os.setxattr(fd, XATTR_PREFIX + name, value.encode())
        except OSError as exc:
            if not self._no_xattrs(exc):
                raise StorageError(
                    f"{self.name}: cannot set the metadata of {key}: {exc.strerror}"
                ) from exc

    def metadata(self, key: str) -> dict[str, str]:
        dirs, name = self._split(key)
        with self._parent(dirs) as dir_fd:
            fd = self._open_at(dir_fd, name, os.O_RDONLY)
        try:
            return self._read_metadata(fd, key)
        finally:
            os.close(fd)

    def _read_metadata(self, fd: int, key: str) -> dict[str, str]:
        result: dict[str, str] = {}
        if not self.xattrs:
            return result
        try:
            for attr in os.listxattr(fd):
                if attr.startswith(XATTR_PREFIX):
                    try:
                        value = os.getxattr(fd, attr)
                    except OSError as exc:
                        if exc.errno == errno.ENODATA:  # removed since it was listed
                            continue
                        raise
                    result[attr[len(XATTR_PREFIX) :]] = value.decode("utf-8", "replace")
        except OSError as exc:
            if not self._no_xattrs(exc):
                raise StorageError(
                    f"{self.name}: cannot read the metadata of {key}: {exc.strerror}"
                ) from exc
        return result

    def _lstat(self, key: str) -> os.stat_result | None:
        """The key's own inode (never a link's target); None if nothing is there."""
        dirs, name = self._split(key)
        try:
            with self._parent(dirs) as dir_fd:
                return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (NotFound, FileNotFoundError):
            return None

    def size(self, key: str) -> int | None:
        st = self._lstat(key)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise KeyEscapesRoot(f"{self.name}: {key} is a symlink")
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{self.name}: {key} is not a regular file")
        return st.st_size

    def start_writeback(self, key: str) -> None:
        """sync_file_range(SYNC_FILE_RANGE_WRITE): queue the file's dirty pages for
        writeback. Bytes that arrived by sftp sit dirty in the page cache; started
        while the server hashes them, the fsync at promotion finds little left."""
        if not self.durable or getattr(_libc, "sync_file_range", None) is None:
            return
        dirs, name = self._split(key)
        try:
            with self._parent(dirs) as dir_fd:
                fd = self._open_at(dir_fd, name, os.O_RDONLY)
        except StorageError:
            return  # the read that follows reports it
        try:
            _libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), 2)
        finally:
            os.close(fd)

    def can_rename_to(self, dest: StorageBackend) -> bool:
        return isinstance(dest, LocalBackend) and self.root.stat().st_dev == dest.root.stat().st_dev

    def identity(self, key: str, strict: bool = False) -> str | None:
        """Device, inode, size and mtime of the file itself (never a link's target);
        ``strict`` adds its change time and link count, which a writer cannot set
        back (a rename changes the change time too, so a moved file is not the same)."""
        st = self._lstat(key)
        if st is None:
            return None
        token = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
        return f"{token}:{st.st_ctime_ns}:{st.st_nlink}" if strict else token

    def links(self, key: str) -> int:
        st = self._lstat(key)
        return st.st_nlink if st is not None else 0

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        dirs, name = self._split(key)
        with self._parent(dirs) as dir_fd:
            fd = self._open_at(dir_fd, name, os.O_RDONLY)
        f = os.fdopen(fd, "rb", buffering=BUFFER_SIZE)
        if offset:
            f.seek(offset)
        return f

    def promote(
        self,
        src_key: str,
        dest: StorageBackend,
        dest_key: str,
        algorithms: tuple[str, ...],
        sync: bool = True,
    ) -> PromoteResult:
        if isinstance(dest, LocalBackend):
            src_dirs, src_name = self._split(src_key)
            dest_dirs, dest_name = dest._split(dest_key)
            try:
                with (
                    self._parent(src_dirs) as src_fd,
                    dest._parent(dest_dirs, create=True) as dest_fd,
                ):
                    if sync and dest.durable:
                        _fsync_at(src_name, src_fd)
                    os.rename(src_name, dest_name, src_dir_fd=src_fd, dst_dir_fd=dest_fd)
                    if sync and dest.durable:
                        os.fsync(dest_fd)
                    return PromoteResult(renamed=True)
            except (NotFound, FileNotFoundError):
                if dest.size(dest_key) is None:
                    raise NotFound(f"{self.name}: no such key {src_key}") from None
                return PromoteResult(renamed=True)  # an earlier attempt already moved it
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise StorageError(
                        f"cannot move {src_key} into {dest.name}: {exc.strerror}"
                    ) from exc
        return self.stream_copy(src_key, dest, dest_key, algorithms, sync)

    def delete(self, key: str) -> None:
        dirs, name = self._split(key)
        try:
            with self._parent(dirs) as dir_fd:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=dir_fd)
                else:
                    os.unlink(name, dir_fd=dir_fd)
        except (NotFound, FileNotFoundError):
            pass

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if prefix:
            dirs, name = self._split(prefix)
            try:
                with self._parent([*dirs, name]):
                    pass  # the prefix is a real directory inside the box
            except NotFound:
                return
        base = self.path(prefix) if prefix else self.root
        for dirpath, _dirs, files in os.walk(base):
            for file in files:
                full = Path(dirpath) / file
                st = full.lstat()
                if stat.S_ISREG(st.st_mode):
                    yield ObjectInfo(str(full.relative_to(self.root)), st.st_size)

    def sync(self, key: str) -> None:
        if self.durable:
            dirs, name = self._split(key)
            with self._parent(dirs) as dir_fd:
                _fsync_at(name, dir_fd)
                os.fsync(dir_fd)

    def flush(self) -> None:
        if self.durable:
            _syncfs(self.root)
