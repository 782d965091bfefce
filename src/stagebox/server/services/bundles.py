"""Small files in bulk: many files in one request, verified and stored together.

Per-file overhead (a request, a transaction, an fsync) is what makes trees of
small files slow. A bundle carries up to 1,000 registered files, framed as
:mod:`stagebox.wire` describes. The server hashes each file as it writes it,
verifies every file against the declared digests, syncs each box once, and
records the batch in one transaction.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import joinedload

from stagebox.checksums import MultiHasher
from stagebox.errors import InvalidInput, LengthExceeded, NotFound
from stagebox.server.db.models import Datafile, Dataset, Replica, ReplicaState, Uploader, utcnow
from stagebox.server.schemas import BundleEntry, BundleManifest, BundleResult
from stagebox.server.services import verify
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import Move, advance_many
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
                .options(
                    joinedload(Replica.datafile)
                    .joinedload(Datafile.dataset)
                    .joinedload(Dataset.uploader)
                )
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
        """Verify every file, promote the good ones, record the batch in one transaction.

        Each file still walks registered → staged → verified → stored (or →
        failed); only the end of its walk is written, all files together.
        """
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
        moves: list[Move] = []
        checksums: list[dict[str, object]] = []
        promotions: list[tuple[Replica, str, str]] = []
        for entry in entries:
            replica = self._replicas[entry.id]
            path: tuple[ReplicaState, ...]
            if replica.state in (S.registered, S.uploading):
                staged = self._digests[entry.id]
                path = (S.uploading, S.staged) if replica.state == S.registered else (S.staged,)
            elif replica.state == S.staged and replica.declared_sha256 is None:
                # Staged already (an empty file, or a PATCH whose /complete never
                # came): the bundle brings the digests the server was waiting for.
                staged = {"sha256": replica.staged_sha256 or "", "md5": replica.staged_md5 or ""}
                path = ()
            else:
                continue  # verified, stored or failed already: nothing to record
            declared = {"sha256": entry.sha256.lower(), "md5": (entry.md5 or "").lower()}
            values: dict[str, object] = {
                "bytes_staged": entry.size,
                "staged_sha256": staged["sha256"],
                "staged_md5": staged.get("md5") or None,
                "declared_sha256": declared["sha256"],
                "declared_md5": declared["md5"] or None,
            }
            mismatch = _mismatch(declared, staged)
            if mismatch:
                moves.append(
                    Move(
                        replica.id,
                        S(replica.state),
                        (*path, S.failed),
                        values | {"error": mismatch},
                    )
                )
                continue
            dest = verify.store_key(replica.datafile)
            promotions.append((replica, dest, staged["sha256"]))
            moves.append(Move(replica.id, S(replica.state), (*path, S.verified, S.stored), values))
            checksums.append(
                {
                    "b_id": replica.datafile_id,
                    "v_sha256": staged["sha256"],
                    "v_md5": staged.get("md5") or values["declared_md5"],
                }
            )
        copied = self._promote(promotions, moves)
        now = utcnow()
        dest_keys = {replica.id: dest for replica, dest, _ in promotions}
        with ctx.catalog.session() as session:
            for move in moves:
                if move.path[-1] == S.stored:
                    key = dest_keys[move.replica_id]
                    move.values.update(
                        box_id=ctx.store_box_id, key=key, verified_at=now, stored_at=now
                    )
            advance_many(session, moves)
            if checksums:
                table = Datafile.__table__
                assert isinstance(table, Table)
                session.connection().execute(
                    update(table)
                    .where(table.c.id == bindparam("b_id"))
                    .values(
                        sha256=bindparam("v_sha256"),
                        md5=bindparam("v_md5"),
                        checksum_source="client",
                    ),
                    checksums,
                )
        for key in copied:
            ctx.staging.delete(key)
        return self._results(entries)

    def _promote(self, promotions: list[tuple[Replica, str, str]], moves: list[Move]) -> list[str]:
        """Move each verified file into the store, then sync the store once.

        Returns the staged keys that were copied (not renamed), to delete once
        the batch is recorded. A copy that hashes wrong turns its move to failed.
        """
        ctx = self._ctx
        staging, store = ctx.staging, ctx.store
        copied: list[str] = []
        by_id = {m.replica_id: i for i, m in enumerate(moves)}
        for replica, dest_key, sha256 in promotions:
            result = staging.promote(
                replica.key, store, dest_key, ctx.settings.algorithms, sync=False
            )
            if result.renamed:
                continue
            if result.digests.get("sha256") == sha256:
                copied.append(replica.key)
                continue
            store.delete(dest_key)
            old = moves[by_id[replica.id]]
            got = result.digests.get("sha256")
            error = f"copy to permanent storage hashed to {got}, expected {sha256}"
            moves[by_id[replica.id]] = Move(
                old.replica_id,
                old.current,
                (*old.path[:-2], S.failed),
                old.values | {"error": error},
            )
        store.flush()
        return copied

    def _results(self, entries: list[BundleEntry]) -> list[BundleResult]:
        ids = [e.id for e in entries]
        with self._ctx.catalog.session() as session:
            rows = session.scalars(
                select(Replica).where(Replica.datafile_id.in_(ids)).order_by(Replica.id)
            ).all()
            latest = {r.datafile_id: r for r in rows}
        return [BundleResult(id=i, state=latest[i].state, error=latest[i].error) for i in ids]


def _mismatch(declared: dict[str, str], staged: dict[str, str]) -> str | None:
    for algo in ("sha256", "md5"):
        want, got = declared.get(algo), staged.get(algo)
        if want and got and want != got:
            return f"{algo} mismatch: declared {want}, staged bytes hash to {got}"
    return None


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
