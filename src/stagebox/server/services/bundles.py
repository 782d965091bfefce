"""Small files in bulk: many files in one request, verified and stored together.

Per-file overhead (a request, a transaction, an fsync) is what makes trees of
small files slow. A bundle carries up to 1,000 registered files, framed as
:mod:`stagebox.wire` describes. The server hashes each file as it writes it,
verifies every file against the declared digests, syncs each box once, and
records the batch in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import Table, bindparam, select, update

from stagebox.checksums import MultiHasher
from stagebox.errors import InvalidInput, LengthExceeded, NotFound
from stagebox.names import clean_directory
from stagebox.server.db.models import Datafile, Dataset, Replica, ReplicaState, Uploader, utcnow
from stagebox.server.schemas import BundleEntry, BundleManifest, BundleResult
from stagebox.server.services import registrations, verify
from stagebox.server.services.context import ServerContext
from stagebox.server.services.states import Move, advance_many
from stagebox.storage import StorageBackend
from stagebox.wire import BUNDLE_CONTENT_TYPE, BUNDLE_HEADER

S = ReplicaState
HEADER = BUNDLE_HEADER
MAX_MANIFEST = 4 << 20
CONTENT_TYPE = BUNDLE_CONTENT_TYPE


@dataclass(frozen=True)
class _Replica:
    """What a bundle needs of a datafile's newest replica."""

    id: int
    datafile_id: int
    state: str
    key: str
    box_id: int
    declared_sha256: str | None
    staged_sha256: str | None
    staged_md5: str | None
    error: str | None
    size: int
    directory: str
    filename: str
    version: int
    dataset_id: int
    owner: str


class BundleReceiver:
    """Collects one bundle body (bounded by ``max_bundle_bytes``); ``finish``
    stages, verifies and stores every file in it."""

    def __init__(self, ctx: ServerContext, uploader: Uploader) -> None:
        self._ctx = ctx
        self._uploader = uploader
        self._buf = bytearray()
        self._entries: list[BundleEntry] | None = None
        self._replicas: dict[int, _Replica] = {}
        self._expected = 0
        self._digests: dict[int, dict[str, str]] = {}
        self._spans: dict[int, tuple[int, int]] = {}
        self._stored: dict[int, str] = {}
        self._box_id = ctx.staging_box_id

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        if len(self._buf) > self._ctx.settings.max_bundle_bytes:
            raise LengthExceeded(
                f"a bundle may hold at most {self._ctx.settings.max_bundle_bytes} bytes"
            )
        if self._entries is None:
            self._parse_manifest()
        if self._entries is not None and len(self._buf) > self._expected:
            raise LengthExceeded("the bundle body runs past the sizes its manifest declares")

    def _parse_manifest(self) -> None:
        if len(self._buf) < HEADER.size:
            return
        (size,) = HEADER.unpack_from(self._buf)
        if size > MAX_MANIFEST:
            raise InvalidInput("manifest", f"must be at most {MAX_MANIFEST} bytes")
        if len(self._buf) < HEADER.size + size:
            return
        raw = bytes(self._buf[HEADER.size : HEADER.size + size])
        try:
            manifest = BundleManifest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(["manifest", *(str(p) for p in first["loc"])])
            raise InvalidInput(where, first["msg"]) from None
        del self._buf[: HEADER.size + size]
        self._load(manifest.files)
        self._entries = manifest.files
        self._expected = sum(e.size for e in manifest.files)

    def _load(self, entries: list[BundleEntry]) -> None:
        ids = [e.id for e in entries]
        if len(set(ids)) != len(ids):
            raise InvalidInput("manifest.files", "a datafile id appears twice")
        # Plain rows, not ORM objects: building 1,000 instances with their
        # datafile and dataset costs more than everything else in a bundle.
        with self._ctx.catalog.session() as session:
            rows = session.execute(
                select(
                    Replica.id,
                    Replica.datafile_id,
                    Replica.state,
                    Replica.key,
                    Replica.box_id,
                    Replica.declared_sha256,
                    Replica.staged_sha256,
                    Replica.staged_md5,
                    Replica.error,
                    Datafile.size,
                    Datafile.directory,
                    Datafile.filename,
                    Datafile.version,
                    Datafile.dataset_id,
                    Dataset.owner,
                )
                .join(Replica.datafile)
                .join(Datafile.dataset)
                .where(Replica.datafile_id.in_(ids), Dataset.uploader_id == self._uploader.id)
                .order_by(Replica.id)
            ).all()
            for row in rows:  # the newest replica of each datafile wins
                self._replicas[row.datafile_id] = _Replica(**row._mapping)
            boxes = {r.box_id for r in self._replicas.values() if r.state != S.stored}
            if len(boxes) > 1:
                raise InvalidInput(
                    "manifest.files", "every file of a bundle must be registered the same way"
                )
            if boxes:
                self._box_id = boxes.pop()
            for i, entry in enumerate(entries):
                found = self._replicas.get(entry.id)
                if found is None:
                    raise NotFound(f"manifest.files[{i}]: no datafile {entry.id}")
                if found.size != entry.size:
                    raise InvalidInput(
                        f"manifest.files[{i}].size",
                        f"datafile {entry.id} was registered with {found.size} bytes",
                    )

    def _hash(self, entries: list[BundleEntry]) -> None:
        """Hash each file where it lies in the body; remember where that is."""
        view = memoryview(self._buf)
        pos = 0
        for entry in entries:
            data = view[pos : pos + entry.size]
            hasher = MultiHasher(self._ctx.settings.algorithms)
            hasher.update(data)
            data.release()
            self._digests[entry.id] = hasher.hexdigests()
            self._spans[entry.id] = (pos, pos + entry.size)
            pos += entry.size
        view.release()

    def _write(self, backend: StorageBackend, items: list[tuple[int, str]]) -> None:
        """Write each (datafile id, key)'s bytes from the body into ``backend``."""
        if not items:
            return
        view = memoryview(self._buf)
        with backend.batch():
            for datafile_id, key in items:
                start, end = self._spans[datafile_id]
                data = view[start:end]
                with backend.open_write(key, 0) as writer:
                    writer.write(data)
                data.release()
        view.release()

    def abort(self) -> None:
        self._buf = bytearray()

    def finish(self) -> list[BundleResult]:
        """Verify every file, promote the good ones, record the batch in one transaction.

        Each file still walks registered → staged → verified → stored (or →
        failed); only the end of its walk is written, all files together.
        """
        entries = self._entries
        if entries is None or len(self._buf) != self._expected:
            self.abort()
            raise InvalidInput("body", "ended before every file in the manifest arrived")
        ctx = self._ctx
        self._hash(entries)
        moves: list[Move] = []
        checksums: list[dict[str, object]] = []
        # Files that are only in the body go straight to the store once verified
        # (the body is their staged copy; a mismatch is kept in staging for a
        # retry); files staged earlier are promoted from staging.
        to_store: list[tuple[int, str]] = []
        to_staging: list[tuple[int, str]] = []
        promotions: list[tuple[_Replica, str, str]] = []
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
            in_body = replica.state in (S.registered, S.uploading)
            if mismatch:
                if in_body:
                    to_staging.append((entry.id, replica.key))
                moves.append(
                    Move(
                        replica.id,
                        S(replica.state),
                        (*path, S.failed),
                        values | {"error": mismatch},
                    )
                )
                continue
            dest = verify.store_key_of(
                self._uploader.uuid,
                replica.owner,
                replica.dataset_id,
                replica.version,
                replica.directory,
                replica.filename,
            )
            if in_body:
                to_store.append((entry.id, dest))
                self._stored[replica.id] = dest
            else:
                promotions.append((replica, dest, staged["sha256"]))
            moves.append(Move(replica.id, S(replica.state), (*path, S.verified, S.stored), values))
            checksums.append(
                {
                    "b_id": replica.datafile_id,
                    "v_sha256": staged["sha256"],
                    "v_md5": staged.get("md5") or values["declared_md5"],
                }
            )
        self._write(ctx.backend(self._box_id), to_staging)
        self._write(ctx.store, to_store)
        self._buf = bytearray()
        copied = self._promote(promotions, moves)
        now = utcnow()
        dest_keys = {replica.id: dest for replica, dest, _ in promotions} | self._stored
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
            ctx.backend(self._box_id).delete(key)
        return self._results(entries, moves)

    def _promote(self, promotions: list[tuple[_Replica, str, str]], moves: list[Move]) -> list[str]:
        """Move each verified file into the store, then sync the store once.

        Returns the staged keys that were copied (not renamed), to delete once
        the batch is recorded. A copy that hashes wrong turns its move to failed.
        """
        ctx = self._ctx
        staging, store = ctx.backend(self._box_id), ctx.store
        by_id = {m.replica_id: i for i, m in enumerate(moves)}
        copied: list[str] = []
        if promotions:
            with staging.batch(), store.batch():
                copied = self._move(promotions, moves, by_id)
        store.flush()  # once, for what was written and what was moved
        return copied

    def _move(
        self,
        promotions: list[tuple[_Replica, str, str]],
        moves: list[Move],
        by_id: dict[int, int],
    ) -> list[str]:
        ctx = self._ctx
        staging, store = ctx.backend(self._box_id), ctx.store
        copied: list[str] = []
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
        return copied

    def _results(self, entries: list[BundleEntry], moves: list[Move]) -> list[BundleResult]:
        """Each file's state as recorded: the end of its move, else what it was."""
        ended = {m.replica_id: m for m in moves}
        results = []
        for entry in entries:
            replica = self._replicas[entry.id]
            move = ended.get(replica.id)
            if move is None:
                results.append(BundleResult(id=entry.id, state=replica.state, error=replica.error))
            else:
                error = move.values.get("error")
                state = move.path[-1] if move.path else S(replica.state)
                results.append(
                    BundleResult(id=entry.id, state=state, error=str(error) if error else None)
                )
        return results


def receive_staged(ctx: ServerContext, uploader: Uploader, path: str) -> list[BundleResult]:
    """Take a bundle the uploader wrote over sftp into its own staging directory.

    ``path`` is relative to that directory. The bundle is read once (without
    following symlinks, a regular file only), each file hashed as it is staged
    exactly as if the bundle had come over http, and the bundle is deleted.
    """
    with ctx.catalog.session() as session:
        box_id = registrations.approved_box(session, uploader).id
    relative = clean_directory(path, "path")
    if not relative:
        raise InvalidInput("path", "must name the bundle file inside your staging directory")
    key = f"{uploader.uuid}/{relative}"
    backend = ctx.backend(box_id)
    size = backend.size(key)
    if size is None:
        raise NotFound(f"nothing staged at {relative}")
    try:
        if size > ctx.settings.max_bundle_bytes:
            raise LengthExceeded(f"a bundle may hold at most {ctx.settings.max_bundle_bytes} bytes")
        receiver = BundleReceiver(ctx, uploader)
        try:
            with backend.open_read(key) as f:
                while chunk := f.read(1 << 20):
                    receiver.feed(chunk)
            return receiver.finish()
        except BaseException:
            receiver.abort()
            raise
    finally:
        backend.delete(key)


def _mismatch(declared: dict[str, str], staged: dict[str, str]) -> str | None:
    for algo in ("sha256", "md5"):
        want, got = declared.get(algo), staged.get(algo)
        if want and got and want != got:
            return f"{algo} mismatch: declared {want}, staged bytes hash to {got}"
    return None
