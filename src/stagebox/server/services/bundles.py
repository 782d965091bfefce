"""Small files in bulk: many files in one request, verified and stored together.

Per-file overhead (a request, a transaction, an fsync) is what makes trees of
small files slow. A bundle carries up to 1,000 registered files, framed as
:mod:`stagebox.wire` describes. The server hashes each file as it writes it,
verifies every file against the declared digests, syncs each box once, and
records the batch in one transaction.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from stagebox.checksums import MultiHasher
from stagebox.errors import InvalidInput, LengthExceeded, NotFound
from stagebox.server.db.models import Datafile, Dataset, Replica, ReplicaState, Uploader
from stagebox.server.schemas import BundleEntry, BundleManifest, BundleResult
from stagebox.server.services import verify
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import transition
from stagebox.storage import StagedWriter
from stagebox.wire import BUNDLE_CONTENT_TYPE, BUNDLE_HEADER

S = ReplicaState
HEADER = BUNDLE_HEADER
MAX_MANIFEST = 4 << 20
CONTENT_TYPE = BUNDLE_CONTENT_TYPE


class BundleReceiver:
    """Consumes a bundle body chunk by chunk; ``finish`` verifies and stores."""

    def __init__(self, ctx: ServerContext, uploader: Uploader) -> None:
        self._ctx = ctx
        self._uploader = uploader
        self._buf = bytearray()
        self._entries: list[BundleEntry] | None = None
        self._replicas: dict[int, Replica] = {}
        self._index = 0
        self._remaining = 0
        self._writer: StagedWriter | None = None
        self._hasher: MultiHasher | None = None
        self._digests: dict[int, dict[str, str]] = {}

    def feed(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        if self._entries is None:
            self._buf += view
            if not self._parse_manifest():
                return
            view = memoryview(bytes(self._buf))
            self._buf.clear()
        while view:
            entries = self._entries
            assert entries is not None
            if self._index >= len(entries):
                raise LengthExceeded("the bundle body runs past the sizes its manifest declares")
            if self._writer is None:
                self._open_next()
                if self._remaining == 0:
                    self._close_current()
                    continue
            take = min(self._remaining, len(view))
            piece = view[:take]
            assert self._writer is not None and self._hasher is not None
            self._writer.write(piece)
            self._hasher.update(piece)
            self._remaining -= take
            view = view[take:]
            if self._remaining == 0:
                self._close_current()

    def _parse_manifest(self) -> bool:
        if len(self._buf) < HEADER.size:
            return False
        (size,) = HEADER.unpack_from(self._buf)
        if size > MAX_MANIFEST:
            raise InvalidInput("manifest", f"must be at most {MAX_MANIFEST} bytes")
        if len(self._buf) < HEADER.size + size:
            return False
        raw = bytes(self._buf[HEADER.size : HEADER.size + size])
        try:
            manifest = BundleManifest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"manifest.{where}", first["msg"]) from None
        del self._buf[: HEADER.size + size]
        self._load(manifest.files)
        self._entries = manifest.files
        return True

    def _load(self, entries: list[BundleEntry]) -> None:
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            raise InvalidInput("manifest.files", "a datafile id appears twice")
        with self._ctx.catalog.session() as session:
            rows = session.scalars(
                select(Replica)
                .join(Replica.datafile)
                .join(Datafile.dataset)
                .options(joinedload(Replica.datafile))
                .where(Replica.datafile_id.in_(ids), Dataset.uploader_id == self._uploader.id)
                .order_by(Replica.id)
            ).all()
            for replica in rows:  # the newest replica of each datafile wins
                self._replicas[replica.datafile_id] = replica
            for i, entry in enumerate(entries):
                found = self._replicas.get(entry.id)
                if found is None:
                    raise NotFound(f"manifest.files[{i}]: no datafile {entry.id}")
                if found.datafile.size != entry.size:
                    raise InvalidInput(
                        f"manifest.files[{i}].size",
                        f"datafile {entry.id} was registered with {found.datafile.size} bytes",
                    )

    def _open_next(self) -> None:
        assert self._entries is not None
        entry = self._entries[self._index]
        replica = self._replicas[entry.id]
        self._remaining = entry.size
        self._hasher = MultiHasher(self._ctx.settings.algorithms)
        if replica.state in (S.registered, S.uploading):
            self._writer = self._ctx.backend(replica.box_id).open_write(replica.key, 0)
        else:
            self._writer = _Discard()  # already staged or stored: hash, keep nothing

    def _close_current(self) -> None:
        assert self._entries is not None and self._writer is not None and self._hasher
        entry = self._entries[self._index]
        self._writer.close()
        self._digests[entry.id] = self._hasher.hexdigests()
        self._writer = None
        self._hasher = None
        self._index += 1

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[BundleResult]:
        entries = self._entries
        # Empty files at the end of the manifest have no bytes to wait for.
        while entries and self._index < len(entries) and self._writer is None:
            if entries[self._index].size:
                break
            self._open_next()
            self._close_current()
        if entries is None or self._index < len(entries) or self._writer is not None:
            self.abort()
            raise InvalidInput("body", "ended before every file in the manifest arrived")
        ctx = self._ctx
        ctx.staging.flush()
        verified: list[tuple[int, str, str, str]] = []
        with ctx.catalog.session() as session:
            for entry in entries:
                found = session.get(Replica, self._replicas[entry.id].id)
                assert found is not None
                replica = found
                declared = {
                    "declared_sha256": entry.sha256.lower(),
                    "declared_md5": entry.md5.lower() if entry.md5 else None,
                }
                if replica.state in (S.registered, S.uploading):
                    digests = self._digests[entry.id]
                    transition(
                        session,
                        replica,
                        S.staged,
                        bytes_staged=entry.size,
                        staged_sha256=digests["sha256"],
                        staged_md5=digests.get("md5"),
                        **declared,
                    )
                elif replica.state == S.staged and replica.declared_sha256 is None:
                    # Staged already (an empty file, or a PATCH whose /complete never
                    # came): the bundle brings the digests the server was waiting for.
                    for name, value in declared.items():
                        setattr(replica, name, value)
                else:
                    continue
                verify.verify_staged(ctx, session, replica)
                if replica.state == S.verified:
                    dest = verify.store_key(replica.datafile)
                    verified.append((replica.id, replica.key, dest, digests["sha256"]))
        self._promote(verified)
        return self._results(entries)

    def _promote(self, verified: list[tuple[int, str, str, str]]) -> None:
        """Promote the batch, sync the store once, record it in one transaction."""
        ctx = self._ctx
        staging, store = ctx.staging, ctx.store
        promoted, copied = [], []
        for replica_id, src_key, dest_key, sha256 in verified:
            result = staging.promote(src_key, store, dest_key, ctx.settings.algorithms, sync=False)
            if result.renamed:
                promoted.append((replica_id, dest_key))
            elif result.digests.get("sha256") == sha256:
                promoted.append((replica_id, dest_key))
                copied.append(src_key)
            else:  # the copy went wrong: leave it to the task, which fails it with a reason
                store.delete(dest_key)
                ctx.runner.submit("promote", replica_id=replica_id)
        store.flush()
        verify.record_stored(ctx, promoted)
        for src_key in copied:
            staging.delete(src_key)

    def _results(self, entries: list[BundleEntry]) -> list[BundleResult]:
        ids = [e.id for e in entries]
        with self._ctx.catalog.session() as session:
            rows = session.scalars(
                select(Replica).where(Replica.datafile_id.in_(ids)).order_by(Replica.id)
            ).all()
            latest = {r.datafile_id: r for r in rows}
        return [BundleResult(id=i, state=latest[i].state, error=latest[i].error) for i in ids]


class _Discard(StagedWriter):
    def __init__(self) -> None:
        self._pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pos += len(data)

    def tell(self) -> int:
        return self._pos

    def discard_to(self, offset: int) -> None:
        self._pos = offset

    def close(self) -> None:
        pass
