"""One uploader's view of the staging box: its own root, nothing else, hashed as written.

Every path a client sends is resolved inside the uploader's root
(``<sftp_root>/<uploader-uuid>``): ``..`` and absolute paths that lead out of it,
another uploader's paths, NUL, backslashes and control characters are refused
with "permission denied", and logged with the uploader's name. Files are
reached from the box's root one directory at a time without following
symlinks, and none can be made: symlinks and hard links are refused, and so is
``setstat`` of times, sizes and owners (a mode alone, which OpenSSH's scp sends,
is accepted and not applied: every file is 0640, owned by the server).

Only the files of a datafile version this uploader registered and has not
finished (its final name and ``NAME.part``) and its own bundle files can be
opened for writing, and never past the registered size. Writes are hashed as
they arrive, in order of offset: a write ahead of the hashed prefix waits in a
bounded buffer; past the bound, or where bytes already hashed are written
again, the file is read back from disk once, from where the in-order hash
stopped. When the final name holds the registered size (a close after SCP, or
the rename of ``NAME.part``), every handle on the file is cut off, and the
catalog records the endpoint's digests and the file's identity: the file is
``staged`` and is verified without being read again. A file staged is never
writable through the endpoint again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import posixpath
import re
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncssh
from asyncssh import SFTPAttrs, SFTPName

from stagebox.checksums import MultiHasher
from stagebox.errors import InvalidName, StageboxError
from stagebox.names import clean_directory
from stagebox.server.services.context import ServerContext
from stagebox.sftpd import catalog
from stagebox.sftpd.catalog import Login, Upload
from stagebox.storage import LocalBackend

log = logging.getLogger(__name__)
T = TypeVar("T")

PART = ".part"
BUNDLE = re.compile(r"^\.bundles/[0-9a-f]{32}\.bundle$")
FILE_MODE = 0o640
DIR_MODE = 0o750
READ_SIZE = 1 << 20
# What setstat may not change (a mode alone is accepted and ignored).
_ATTR_CHANGES = ("size", "uid", "gid", "owner", "group", "atime", "mtime", "crtime", "ctime")


class Refused(asyncssh.SFTPPermissionDenied):
    """Permission denied, with the reason logged under the uploader's name."""


@dataclass
class Limits:
    """Per-session and per-file bounds."""

    open_files: int = 64  # handles one session may hold
    ahead_bytes: int = 64 << 20  # out-of-order writes buffered per file before re-reading
    bundle_bytes: int = 1 << 30  # the largest bundle file
    max_depth: int = 64  # directories below the uploader's root


class Tracker:
    """The in-order hash of one file (one inode), shared by every handle on it."""

    def __init__(self, algorithms: tuple[str, ...], limit: int) -> None:
        self.algorithms = algorithms
        self.limit = limit
        self.handles: set[Handle] = set()
        self.reset()

    def reset(self) -> None:
        """Start again from byte 0 (a new file, or one truncated)."""
        self.hasher: MultiHasher | None = MultiHasher(self.algorithms)
        self.ahead: dict[int, bytes] = {}
        self.ahead_bytes = 0
        self.gap = False  # bytes ahead were dropped: read the rest back at the end
        self.rebuilding = False  # the prefix on disk is being hashed on another thread
        self.generation = getattr(self, "generation", 0) + 1

    @property
    def hashed(self) -> int:
        return self.hasher.length if self.hasher is not None else 0

    def feed(self, offset: int, data: bytes) -> None:
        hasher = self.hasher
        if hasher is None:
            return
        if self.rebuilding:
            # Bytes written while the prefix is read back: only a full re-read can
            # tell what the file holds.
            self.hasher = None
            self._drop_ahead()
            return
        end = offset + len(data)
        if offset == hasher.length:
            hasher.update(data)
            while self.ahead:
                piece = self.ahead.pop(hasher.length, None)
                if piece is None:
                    break
                self.ahead_bytes -= len(piece)
                hasher.update(piece)
            if self.ahead and min(self.ahead) < hasher.length:
                self._drop_ahead()  # a piece overlapping what is hashed now
        elif offset < hasher.length:
            # Bytes already hashed written again: only a full re-read can tell.
            self.hasher = None
            self._drop_ahead()
        elif not self.gap:
            same = self.ahead.pop(offset, None)
            if same is not None:
                self.ahead_bytes -= len(same)  # the same range again: the later bytes win
            if any(o < end and o + len(p) > offset for o, p in self.ahead.items()):
                self._drop_ahead()  # overlapping pieces: only the disk knows the result
                return
            if self.ahead_bytes + len(data) > self.limit:
                self._drop_ahead()
                return
            self.ahead[offset] = data
            self.ahead_bytes += len(data)

    def _drop_ahead(self) -> None:
        self.ahead.clear()
        self.ahead_bytes = 0
        self.gap = True

    def complete(self, size: int) -> dict[str, str] | None:
        """The digests if every byte up to ``size`` was hashed in order."""
        if self.hasher is not None and not self.rebuilding and self.hasher.length == size:
            return self.hasher.hexdigests()
        return None


@dataclass(eq=False)
class Handle:
    fd: int
    key: str  # in the box: <uploader-uuid>/...
    upload: Upload | None  # the datafile version written, None for a bundle or a read
    writable: bool
    tracker: Tracker | None = None
    inode: tuple[int, int] = (0, 0)
    dead: str = ""  # why writes are refused from now on


@dataclass
class Files:
    """What every session of one endpoint process shares: the trackers by inode,
    and, for files closed but not yet renamed into place, their finished hashes."""

    algorithms: tuple[str, ...]
    limits: Limits
    trackers: dict[tuple[int, int], Tracker] = field(default_factory=dict)
    # Every handle open for writing, by inode: what a seal cuts off.
    writers: dict[tuple[int, int], set[Handle]] = field(default_factory=dict)
    finished: OrderedDict[tuple[int, int], tuple[int, int, Tracker]] = field(
        default_factory=OrderedDict
    )
    keep_finished: int = 4096
    # One lock per upload (its final name) while a seal or an open for writing decides.
    _locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def exclusive(self, final: str) -> AsyncIterator[None]:
        """Opens for writing and the seal of one upload, one at a time: an open either
        registers its handle before the seal cuts handles off, or finds the upload
        staged. (One endpoint process per box: the lock lives here.)"""
        lock, users = self._locks.get(final, (asyncio.Lock(), 0))
        self._locks[final] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[final]
            if users == 1:
                del self._locks[final]
            else:
                self._locks[final] = (lock, users - 1)

    def tracker(self, inode: tuple[int, int]) -> Tracker | None:
        return self.trackers.get(inode)

    def attach(self, handle: Handle, tracker: Tracker) -> None:
        handle.tracker = tracker
        tracker.handles.add(handle)
        self.trackers[handle.inode] = tracker

    def opened(self, handle: Handle) -> None:
        self.writers.setdefault(handle.inode, set()).add(handle)

    def detach(self, handle: Handle, st: os.stat_result | None) -> None:
        writers = self.writers.get(handle.inode)
        if writers is not None:
            writers.discard(handle)
            if not writers:
                del self.writers[handle.inode]
        tracker, handle.tracker = handle.tracker, None
        if tracker is None:
            return
        tracker.handles.discard(handle)
        if tracker.handles:
            return
        self.trackers.pop(handle.inode, None)
        if st is not None and tracker.complete(st.st_size) is not None:
            # Closed whole, renamed next: keep its hash for the rename.
            self.finished[handle.inode] = (st.st_size, st.st_mtime_ns, tracker)
            while len(self.finished) > self.keep_finished:
                self.finished.popitem(last=False)

    def take_finished(self, st: os.stat_result) -> Tracker | None:
        """The hash kept for a closed file, if the file is still as it was closed."""
        inode = (st.st_dev, st.st_ino)
        kept = self.finished.pop(inode, None)
        if kept is None:
            return None
        size, mtime, tracker = kept
        return tracker if (size, mtime) == (st.st_size, st.st_mtime_ns) else None

    def cut_off(self, inode: tuple[int, int], why: str) -> Tracker | None:
        """Refuse every further write through any handle on ``inode``, in any session."""
        for handle in self.writers.get(inode, ()):
            handle.dead = why
        return self.trackers.get(inode)


def _errno_error(exc: OSError, what: str) -> asyncssh.SFTPError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return asyncssh.SFTPNoSuchFile(f"{what}: no such file")
    if exc.errno == errno.EEXIST:
        return asyncssh.SFTPFailure(f"{what}: already exists")
    if exc.errno == errno.ENOTEMPTY:
        return asyncssh.SFTPFailure(f"{what}: directory not empty")
    if exc.errno == errno.ELOOP:
        return Refused(f"{what}: a symlink")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return asyncssh.SFTPNoSpaceOnFilesystem(f"{what}: no space left")
    return asyncssh.SFTPFailure(f"{what}: {exc.strerror}")


class UploaderSFTP(asyncssh.SFTPServer):
    """The SFTP (and SCP) server of one session, confined to the uploader's root."""

    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        *,
        who: Login,
        sftp_root: str,
        box: LocalBackend,
        box_id: int,
        files: Files,
        ctx: ServerContext,
        touch: Callable[[], None],
    ) -> None:
        super().__init__(chan)
        self.who = who
        self.box = box
        self.box_id = box_id
        self.files = files
        self.ctx = ctx
        self._touch = touch
        self.prefix = sftp_root.rstrip("/")
        self.home = f"{self.prefix}/{who.uuid}"
        self.handles: set[Handle] = set()

    # -- paths ---------------------------------------------------------------

    def _refuse(self, op: str, path: object, why: str) -> Refused:
        shown = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
        log.warning("sftp %s: refused %s %r: %s", self.who.name, op, shown, why)
        return Refused(why)

    def _key(self, op: str, path: bytes) -> str:
        """The box key of ``path`` (``<uuid>`` for the root itself), or refuse."""
        self._touch()
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise self._refuse(op, path, "path is not UTF-8") from None
        if "\x00" in text or "\\" in text:
            raise self._refuse(op, path, "path has a NUL or a backslash")
        absolute = text if text.startswith("/") else f"{self.home}/{text}"
        norm = posixpath.normpath(absolute)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        if norm == self.home:
            return self.who.uuid
        if not norm.startswith(self.home + "/"):
            raise self._refuse(op, path, "outside this uploader's staging root")
        key = norm[len(self.prefix) + 1 :]
        try:
            clean = clean_directory(key, "path")
        except InvalidName as exc:
            raise self._refuse(op, path, exc.rule) from None
        if clean.count("/") > self.files.limits.max_depth:
            raise self._refuse(op, path, "too deep")
        return clean

    def _virtual(self, key: str) -> bytes:
        return f"{self.prefix}/{key}".encode()

    async def _catalog(self, fn: Callable[..., T], *args: Any) -> T:
        """A catalog call, on a worker thread so the other sessions go on."""
        return await asyncio.to_thread(fn, self.ctx, *args)

    def _split(self, key: str) -> tuple[list[str], str]:
        parts = key.split("/")
        return parts[:-1], parts[-1]

    def _lstat(self, key: str) -> os.stat_result:
        dirs, name = self._split(key)
        with self.box.directory(dirs) as dir_fd:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def _os(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except StageboxError as exc:
            raise asyncssh.SFTPNoSuchFile(f"{what}: {exc}") from None
        except OSError as exc:
            raise _errno_error(exc, what) from None

    # -- looking ---------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        return self._virtual(self._key("realpath", path or b"."))

    def lstat(self, path: bytes) -> os.stat_result:
        key = self._key("lstat", path)
        return self._os(key, lambda: self._lstat(key))

    def stat(self, path: bytes) -> os.stat_result:
        return self.lstat(path)  # nothing in a staging root is a symlink to follow

    def fstat(self, file_obj: object) -> os.stat_result:
        assert isinstance(file_obj, Handle)
        return os.fstat(file_obj.fd)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        key = self._key("listdir", path)

        def entries() -> list[SFTPName]:
            with self.box.directory(key.split("/")) as dir_fd:
                names = []
                for name in os.listdir(dir_fd):
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    names.append(SFTPName(os.fsencode(name), attrs=SFTPAttrs.from_local(st)))
                return names

        for name in self._os(key, entries):
            yield name

    def statvfs(self, path: bytes) -> os.statvfs_result:
        self._key("statvfs", path)
        return os.statvfs(self.box.root)

    def readlink(self, path: bytes) -> bytes:
        raise self._refuse("readlink", path, "no symlinks here")

    # -- refused outright -------------------------------------------------------

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._refuse("symlink", newpath, "symlinks cannot be made")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise self._refuse("link", newpath, "hard links cannot be made")

    def _setstat(self, op: str, key: str, attrs: SFTPAttrs, size: int | None) -> None:
        """Modes are the server's: a mode alone (OpenSSH's scp sends its source file's)
        is accepted and not applied, and so is the size the file already has (scp
        sends that too). Times, other sizes and owners are refused."""
        changes = [name for name in _ATTR_CHANGES if getattr(attrs, name, None) is not None]
        if attrs.size is not None and attrs.size == size:
            changes.remove("size")
        if changes:
            raise self._refuse(op, key, f"{', '.join(changes)}: the server's to set")

    def _size(self, key: str) -> int | None:
        try:
            return self._lstat(key).st_size
        except (OSError, StageboxError):
            return None

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        key = self._key("setstat", path)
        self._setstat("setstat", key, attrs, self._size(key))

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        key = self._key("lsetstat", path)
        self._setstat("lsetstat", key, attrs, self._size(key))

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        assert isinstance(file_obj, Handle)
        self._setstat("fsetstat", file_obj.key, attrs, os.fstat(file_obj.fd).st_size)

    def format_user(self, uid: int | None) -> str:
        return "stagebox"

    def format_group(self, gid: int | None) -> str:
        return "stagebox"

    def lock(self, file_obj: object, offset: int, length: int, flags: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not offered")

    def unlock(self, file_obj: object, offset: int, length: int) -> None:
        raise asyncssh.SFTPOpUnsupported("locks are not offered")

    # -- directories -------------------------------------------------------------

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        key = self._key("mkdir", path)
        dirs, name = self._split(key)
        if not dirs:
            raise self._refuse("mkdir", path, "the staging root itself exists")

        def make() -> None:
            with self.box.directory(dirs) as dir_fd:
                os.mkdir(name, DIR_MODE, dir_fd=dir_fd)

        self._os(key, make)

    def rmdir(self, path: bytes) -> None:
        key = self._key("rmdir", path)
        dirs, name = self._split(key)
        if not dirs:
            raise self._refuse("rmdir", path, "the staging root stays")

        def remove() -> None:
            with self.box.directory(dirs) as dir_fd:
                os.rmdir(name, dir_fd=dir_fd)

        self._os(key, remove)

    # -- files -------------------------------------------------------------------

    async def _upload_of(self, op: str, path: bytes, key: str) -> Upload | None:
        """The unfinished upload ``key`` (or ``key`` minus ``.part``) belongs to;
        None for this uploader's bundle file; refused for anything else."""
        relative = key[len(self.who.uuid) + 1 :]
        if BUNDLE.match(relative):
            return None
        upload = await self._catalog(catalog.writable, self.box_id, self.who, _final(key))
        if upload is None:
            raise self._refuse(op, path, "not an unfinished upload of this uploader")
        return upload

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> Handle:
        key = self._key("open", path)
        if len(self.handles) >= self.files.limits.open_files:
            raise asyncssh.SFTPFailure(f"at most {self.files.limits.open_files} open files")
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC))
        if not writing:
            fd = self._os(key, lambda: self._open_fd(key, os.O_RDONLY))
            handle = Handle(fd, key, None, writable=False)
            self.handles.add(handle)
            return handle
        flags = os.O_RDWR
        if pflags & asyncssh.FXF_CREAT:
            flags |= os.O_CREAT
        if pflags & asyncssh.FXF_EXCL:
            flags |= os.O_EXCL
        if pflags & asyncssh.FXF_TRUNC:
            flags |= os.O_TRUNC
        async with self.files.exclusive(_final(key)):
            upload = await self._upload_of("open", path, key)
            fd = self._os(key, lambda: self._open_fd(key, flags))
            st = os.fstat(fd)
            handle = Handle(fd, key, upload, writable=True, inode=(st.st_dev, st.st_ino))
            self.handles.add(handle)
            self.files.opened(handle)
        if upload is not None:
            await self._track(handle, st)
        return handle

    def _open_fd(self, key: str, flags: int) -> int:
        dirs, name = self._split(key)
        with self.box.directory(dirs) as dir_fd:
            fd = os.open(
                name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE, dir_fd=dir_fd
            )
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise OSError(errno.EPERM, "not a plain file")
        os.set_blocking(fd, True)
        return fd

    async def _track(self, handle: Handle, st: os.stat_result) -> None:
        """Share the file's tracker, or start one. An interrupted file's hash is rebuilt
        from what is on disk, once, so the rest continues it in order; the tracker is
        shared from the start, so every handle on the file feeds the same one."""
        tracker = self.files.tracker(handle.inode)
        if tracker is not None:
            if st.st_size == 0 and tracker.hashed:
                tracker.reset()  # truncated by this open: start again, for every handle
            self.files.attach(handle, tracker)
            return
        tracker = self.files.take_finished(st)
        if tracker is not None:
            self.files.attach(handle, tracker)
            return
        tracker = Tracker(self.files.algorithms, self.files.limits.ahead_bytes)
        self.files.attach(handle, tracker)
        if st.st_size:
            tracker.rebuilding = True
            generation = tracker.generation
            prefix = MultiHasher(self.files.algorithms)
            try:
                await asyncio.to_thread(_hash_prefix, handle.fd, prefix, st.st_size)
            finally:
                if tracker.generation == generation:
                    tracker.rebuilding = False
            hasher = tracker.hasher
            if tracker.generation == generation and hasher is not None and hasher.length == 0:
                tracker.hasher = prefix  # nothing was written (or truncated) meanwhile

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, Handle)
        self._touch()
        return os.pread(file_obj.fd, min(size, 1 << 20), offset)

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, Handle)
        self._touch()
        handle = file_obj
        if handle.dead:
            raise self._refuse("write", handle.key, handle.dead)
        if not handle.writable:
            raise self._refuse("write", handle.key, "opened for reading")
        limit = handle.upload.size if handle.upload else self.files.limits.bundle_bytes
        if offset + len(data) > limit:
            raise self._refuse("write", handle.key, f"past the registered size ({limit} bytes)")
        view = memoryview(data)
        at = offset
        while view:
            try:
                done = os.pwrite(handle.fd, view, at)
            except OSError as exc:
                raise _errno_error(exc, handle.key) from None
            view, at = view[done:], at + done
        if handle.tracker is not None:
            handle.tracker.feed(offset, data)
        return len(data)

    def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, Handle)

    async def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, Handle)
        handle = file_obj
        self.handles.discard(handle)
        st = None
        try:
            st = os.fstat(handle.fd) if handle.tracker is not None else None
            upload = handle.upload
            if upload is not None and not handle.dead and not handle.key.endswith(PART):
                await self._seal(handle.key, upload)
        finally:
            self.files.detach(handle, st)
            os.close(handle.fd)

    async def _seal(self, key: str, upload: Upload) -> bool:
        """If ``key`` (a final name) holds the registered size: cut every handle
        off, finish the hash (reading back only what was not hashed in order),
        and record the upload staged with the endpoint's digests."""
        async with self.files.exclusive(key):
            return await self._seal_now(key, upload)

    async def _seal_now(self, key: str, upload: Upload) -> bool:
        try:
            st = self._lstat(key)
        except (OSError, StageboxError):
            return False
        if st.st_size != upload.size:
            await self._catalog(catalog.record_progress, upload.replica_id, st.st_size)
            return False
        inode = (st.st_dev, st.st_ino)
        tracker = self.files.cut_off(inode, "the file is staged; it cannot be written again")
        if tracker is None:
            tracker = self.files.take_finished(st)
        digests = tracker.complete(upload.size) if tracker is not None else None
        if digests is None:
            digests = await self._busy(self._hash_rest, key, tracker)
        identity = self.box.identity(key)
        staged = await self._catalog(catalog.record_staged, upload.replica_id, digests, identity)
        if staged:
            log.info("sftp %s: %s staged, %d bytes", self.who.name, key, upload.size)
        return bool(staged)

    async def _busy(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread, the session not idle while it runs (reading
        back a big file written out of order takes a while)."""
        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        while not task.done():
            self._touch()
            await asyncio.wait({task}, timeout=1.0)
        return task.result()

    def _hash_rest(self, key: str, tracker: Tracker | None) -> dict[str, str]:
        hasher = tracker.hasher if tracker is not None else None
        return hash_rest(self.box, key, hasher or MultiHasher(self.files.algorithms))

    def remove(self, path: bytes) -> Any:
        return self._remove(path)

    async def _remove(self, path: bytes) -> None:
        key = self._key("remove", path)
        async with self.files.exclusive(_final(key)):
            await self._remove_now(path, key)

    async def _remove_now(self, path: bytes, key: str) -> None:
        await self._upload_of("remove", path, key)
        dirs, name = self._split(key)

        def unlink() -> None:
            with self.box.directory(dirs) as dir_fd:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EPERM, "not a plain file")
                self.files.cut_off((st.st_dev, st.st_ino), "the file was removed")
                os.unlink(name, dir_fd=dir_fd)

        self._os(key, unlink)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, replace=False)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath, replace=True)

    async def _rename(self, oldpath: bytes, newpath: bytes, replace: bool) -> None:
        """Only ``NAME.part`` into ``NAME``, of an unfinished upload of this uploader."""
        old, new = self._key("rename", oldpath), self._key("rename", newpath)
        if old != new + PART:
            raise self._refuse("rename", oldpath, "only NAME.part can be renamed, to NAME")
        async with self.files.exclusive(new):
            await self._rename_now(newpath, new, replace)

    async def _rename_now(self, newpath: bytes, new: str, replace: bool) -> None:
        upload = await self._upload_of("rename", newpath, new)
        assert upload is not None
        dirs, name = self._split(new)

        def move() -> None:
            with self.box.directory(dirs) as dir_fd:
                st = os.stat(name + PART, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise OSError(errno.EPERM, "not a plain file")
                if not replace:
                    try:
                        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        pass
                    else:
                        raise OSError(errno.EEXIST, "exists")
                os.rename(name + PART, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

        self._os(new, move)
        await self._seal_now(new, upload)

    def exit(self) -> None:
        for handle in list(self.handles):
            self.files.detach(handle, None)
            os.close(handle.fd)
        self.handles.clear()
        # As sshd's sftp-server does: OpenSSH's scp (SFTP mode) fails on a session
        # that ends without an exit status.
        with contextlib.suppress(OSError, asyncssh.Error):
            self.channel.exit(0)


def hash_rest(box: LocalBackend, key: str, hasher: MultiHasher) -> dict[str, str]:
    """Finish ``hasher`` (which holds the file's first ``hasher.length`` bytes) from disk."""
    with box.open_read(key, hasher.length) as f:
        hasher.update_from(f)
    return hasher.hexdigests()


def _final(key: str) -> str:
    """The upload's final name: ``key`` without ``.part``."""
    return key[: -len(PART)] if key.endswith(PART) else key


def _hash_prefix(fd: int, hasher: MultiHasher, size: int) -> None:
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(READ_SIZE, size - offset), offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
