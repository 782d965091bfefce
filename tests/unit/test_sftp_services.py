"""Registration, boxes and the sftp side of verify, through the services (no sshd)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import asyncssh
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from stagebox.errors import Forbidden, InvalidInput
from stagebox.server.db.models import Base, Replica, ReplicaState
from stagebox.server.schemas import DatafileRegister
from stagebox.server.services import boxes, datafiles, registrations, uploaders, verify
from tests.sftp_helpers import as_legacy_openssh

S = ReplicaState


def public_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


@pytest.fixture
def sftp_box(ctx, tmp_path):
    with ctx.catalog.session() as s:
        box = boxes.add_box(
            s,
            "stage",
            role="staging",
            path=str(tmp_path / "stage"),
            sftp_host="127.0.0.1",
            sftp_user="stagebox-sftp",
        )
        box.attributes = as_legacy_openssh(box.attributes)
        return box.name


@pytest.fixture
def approved(ctx, alice, sftp_box):
    with ctx.catalog.session() as s:
        me = s.merge(alice)
        request = registrations.file_request(s, me, public_key())
        registrations.approve(s, request.id, sftp_box)
    return alice


def test_migrations_match_the_models(ctx) -> None:
    with ctx.catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_request_is_reused_for_the_same_key(ctx, alice) -> None:
    key = public_key()
    with ctx.catalog.session() as s:
        me = s.merge(alice)
        first = registrations.file_request(s, me, key)
        again = registrations.file_request(s, me, key.strip() + " another comment")
        assert first.id == again.id
        assert first.fingerprint.startswith("SHA256:")
        assert registrations.list_requests(s, uploader=me)[0].state == "pending"


def test_approval_needs_an_sftp_staging_box(ctx, alice, tmp_path) -> None:
    with ctx.catalog.session() as s:
        request = registrations.file_request(s, s.merge(alice), public_key())
        with pytest.raises(InvalidInput, match="sftp attributes"):
            registrations.approve(s, request.id, "staging")


def test_sftp_registration_is_forbidden_until_approved(ctx, alice, sftp_box) -> None:
    item = DatafileRegister(dataset="d", filename="f", size=3)
    with ctx.catalog.session() as s:
        me = s.merge(alice)
        with pytest.raises(Forbidden, match="no registration request"):
            datafiles.register_batch(ctx, s, me, [item], "http://x", method="sftp")
        request = registrations.file_request(s, me, public_key())
        with pytest.raises(Forbidden, match="pending"):
            datafiles.register_batch(ctx, s, me, [item], "http://x", method="sftp")
        registrations.reject(s, request.id, "not this one")
        with pytest.raises(Forbidden, match="rejected .not this one."):
            datafiles.register_batch(ctx, s, me, [item], "http://x", method="sftp")


def test_authorized_keys_lines_follow_approval_and_revocation(
    ctx,
    approved,
    sftp_box,
) -> None:
    with ctx.catalog.session() as s:
        lines = registrations.authorized_keys(s, user="stagebox-sftp")
        assert len(lines) == 1
        root = boxes.get_box(s, sftp_box).attributes["sftp_root"]
        assert lines[0].startswith(f'restrict,command="internal-sftp -d {root}/{approved.uuid}" ')
        assert lines[0].endswith(f"stagebox:{approved.name}:1")
        assert registrations.authorized_keys(s, user="someone-else") == []
        uploaders.revoke_uploader(s, approved.name)
        assert registrations.authorized_keys(s, user="stagebox-sftp") == []


def _register_sftp(ctx, uploader, size, filename="f.bin"):
    item = DatafileRegister(dataset="d", directory="sub", filename=filename, size=size)
    with ctx.catalog.session() as s:
        (answer,) = datafiles.register_batch(ctx, s, s.merge(uploader), [item], "http://x", "sftp")
    os.makedirs(os.path.dirname(answer.sftp_path), exist_ok=True)  # what the client does
    return answer


def test_sftp_upload_is_reread_verified_and_promoted(ctx, approved) -> None:
    data = os.urandom(100_000)
    answer = _register_sftp(ctx, approved, len(data))
    assert answer.sftp_path.endswith(f"/{approved.uuid}/1/v1/sub/f.bin")
    with open(answer.sftp_path, "wb") as f:
        f.write(data)
    digest = hashlib.sha256(data).hexdigest()
    public = datafiles.complete(ctx, approved, answer.id, digest, None)
    assert public.state == "staged"
    ctx.runner.run_all()
    with ctx.catalog.session() as s:
        replica = s.query(Replica).one()
        assert replica.state == S.stored
        assert replica.datafile.sha256 == digest
        assert replica.datafile.checksum_source == "client"
    assert not os.path.exists(answer.sftp_path)


def test_a_file_rewritten_after_verification_is_not_stored(ctx, approved) -> None:
    data = os.urandom(50_000)
    answer = _register_sftp(ctx, approved, len(data))
    with open(answer.sftp_path, "wb") as f:
        f.write(data)
    datafiles.complete(ctx, approved, answer.id, hashlib.sha256(data).hexdigest(), None)
    name, args = ctx.runner.submitted.pop(0)
    with ctx.catalog.session() as s:
        replica = verify._load(s, args["replica_id"])
        verify.stage_if_whole(ctx, s, replica)
        verify.verify_staged(ctx, s, replica)
        assert replica.state == S.verified
    # Same size, new content, after the server hashed it.
    with open(answer.sftp_path, "r+b") as f:
        f.write(b"X" * 10)
    os.utime(answer.sftp_path, ns=(1, 1))
    verify.promote_task(ctx, args["replica_id"])
    with ctx.catalog.session() as s:
        replica = s.get(Replica, args["replica_id"])
        assert replica.state == S.failed
        assert "changed after it was verified" in replica.error
    assert list((ctx.settings.store_path).rglob("*.bin")) == []


def test_a_size_mismatch_on_complete_fails_with_the_reason(ctx, approved) -> None:
    answer = _register_sftp(ctx, approved, 10)
    with open(answer.sftp_path, "wb") as f:
        f.write(b"0123456789ab")
    public = datafiles.complete(ctx, approved, answer.id, "0" * 64, None)
    assert public.state == "failed"
    assert public.error == "size mismatch: registered 10 bytes, staged 12"


def test_switching_method_discards_the_other_ways_bytes(ctx, approved) -> None:
    answer = _register_sftp(ctx, approved, 10)
    with open(answer.sftp_path + ".part", "wb") as f:
        f.write(b"01234")
    item = DatafileRegister(dataset="d", directory="sub", filename="f.bin", size=10)
    with ctx.catalog.session() as s:
        (again,) = datafiles.register_batch(ctx, s, s.merge(approved), [item], "http://x")
    assert again.upload_url and again.offset == 0
    assert not os.path.exists(answer.sftp_path + ".part")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"role": "attic", "path": "/x"}, "role"),
        ({"role": "staging", "path": "relative"}, "path"),
        ({"role": "staging", "path": "/x y"}, "path"),
        ({"role": "staging", "path": "/x", "sftp_host": "h"}, "sftp_user"),
        ({"role": "staging", "path": "/x", "sftp_user": "u"}, "sftp_host"),
        (
            {"role": "staging", "path": "/x", "sftp_host": "h", "sftp_user": "u", "sftp_port": 0},
            "sftp_port",
        ),
        ({"role": "permanent", "path": "/x", "sftp_host": "h", "sftp_user": "u"}, "role"),
        (
            {
                "role": "staging",
                "path": "/x",
                "sftp_host": "h",
                "sftp_user": "u",
                "sftp_root": '/a"b',
            },
            "sftp_root",
        ),
        ({"role": "staging", "path": "/x/../y"}, "path"),
        ({"role": "staging", "backend": "ftp", "path": "/x"}, "backend"),
        (
            {
                "role": "staging",
                "path": "/x",
                "sftp_host": "h",
                "sftp_user": "u",
                "sftp_endpoint": "openssh",
            },
            "sftp_endpoint",
        ),
    ],
)
def test_box_rules(ctx, options, field) -> None:
    with ctx.catalog.session() as s, pytest.raises(InvalidInput) as info:
        boxes.add_box(s, "b", **options)
    assert info.value.field == field


def test_sshd_fast_path_gives_the_same_lines(ctx, approved, capsys) -> None:
    from stagebox.authorized_keys import fast_path

    with ctx.catalog.session() as s:
        expected = registrations.authorized_keys(s, user="stagebox-sftp")
    data_dir = str(ctx.settings.data_dir)
    assert fast_path(["admin", "--data-dir", data_dir, "authorized-keys", "stagebox-sftp"])
    assert capsys.readouterr().out.splitlines() == expected
    assert fast_path(["admin", f"--data-dir={data_dir}", "authorized-keys", "nobody"])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["admin", "authorized-keys", "u"],  # no data dir: the full CLI decides
        ["admin", "--data-dir", "/nonexistent", "authorized-keys", "u"],
        ["admin", "--data-dir", "/x", "authorized-keys", "--help"],
        ["upload", "src"],
        [],
    ],
)
def test_sshd_fast_path_leaves_everything_else_to_the_cli(argv, monkeypatch) -> None:
    from stagebox.authorized_keys import fast_path

    monkeypatch.delenv("STAGEBOX_DATA_DIR", raising=False)
    assert not fast_path(argv)


@pytest.fixture
def split_ctx(tmp_path):
    """The store on another filesystem (tmpfs) than staging: promotion must copy."""
    import shutil
    import tempfile

    from stagebox.config import Settings
    from stagebox.server.runtime import build_context
    from tests.unit.conftest import InlineRunner

    store = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="stagebox-store-"))
    assert store.stat().st_dev != tmp_path.stat().st_dev
    ctx = build_context(Settings(data_dir=tmp_path / "data", store_dir=store))
    runner = InlineRunner()
    runner.tasks = dict(ctx.runner._tasks)
    ctx.runner.shutdown()
    ctx.runner = runner
    with ctx.catalog.session() as s:
        uploader, _ = uploaders.add_uploader(s, "bob")
        box = boxes.add_box(
            s,
            "stage",
            role="staging",
            path=str(tmp_path / "stage"),
            sftp_host="127.0.0.1",
            sftp_user="stagebox-sftp",
        )
        box.attributes = as_legacy_openssh(box.attributes)
        request = registrations.file_request(s, uploader, public_key())
        registrations.approve(s, request.id, "stage")
    yield ctx, uploader
    ctx.catalog.dispose()
    shutil.rmtree(store, ignore_errors=True)


def test_across_filesystems_the_copy_is_the_only_read(split_ctx, monkeypatch) -> None:
    ctx, bob = split_ctx

    def no_second_read(*args, **kwargs):
        raise AssertionError("the staged file was read twice")

    monkeypatch.setattr(verify, "rehash_staged", no_second_read)
    data = os.urandom(3 << 20)
    answer = _register_sftp(ctx, bob, len(data))
    with open(answer.sftp_path, "wb") as f:
        f.write(data)
    datafiles.complete(ctx, bob, answer.id, hashlib.sha256(data).hexdigest(), None)
    ctx.runner.run_all()
    with ctx.catalog.session() as s:
        replica = s.query(Replica).one()
        assert replica.state == S.stored, replica.error
        stored = ctx.store.path(replica.key)
    assert stored.read_bytes() == data
    assert not os.path.exists(answer.sftp_path)


def test_across_filesystems_a_mismatch_keeps_nothing_in_the_store(split_ctx) -> None:
    ctx, bob = split_ctx
    data = os.urandom(100_000)
    answer = _register_sftp(ctx, bob, len(data))
    with open(answer.sftp_path, "wb") as f:
        f.write(data)
    datafiles.complete(ctx, bob, answer.id, "0" * 64, None)
    ctx.runner.run_all()
    with ctx.catalog.session() as s:
        replica = s.query(Replica).one()
        assert replica.state == S.failed
        assert replica.error.startswith("sha256 mismatch")
    assert [p for p in ctx.store.root.rglob("*") if p.is_file()] == []
    assert os.path.exists(answer.sftp_path)  # kept until a retry
