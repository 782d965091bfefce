"""Verify, promote and sweep, driven through the services without HTTP."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest

from stagebox.errors import Conflict
from stagebox.server.db.models import Replica, ReplicaState, utcnow
from stagebox.server.schemas import DatafileRegister
from stagebox.server.services import datafiles, verify
from stagebox.server.services.states import ALLOWED, can_move, transition
from stagebox.server.services.uploads import PatchWriter

S = ReplicaState


def register(ctx, uploader, data: bytes, name="f.bin"):
    with ctx.catalog.session() as s:
        df, replica, _ = datafiles.register_one(
            ctx, s, uploader, DatafileRegister(dataset="ds", filename=name, size=len(data))
        )
        return df.id, replica.id, replica.upload_token


def send(ctx, uploader, token, data: bytes, offset=0):
    writer = PatchWriter.begin(ctx, uploader, token, offset, None, None)
    writer.write(data[offset:])
    return writer.finish()


def state_of(ctx, replica_id):
    with ctx.catalog.session() as s:
        return s.get(Replica, replica_id)


def test_every_state_has_rules_and_stored_is_final():
    assert set(ALLOWED) == set(S)
    assert ALLOWED[S.stored] == frozenset()
    assert can_move(S.failed, S.uploading)
    assert not can_move(S.registered, S.stored)


def test_illegal_and_racing_transitions_are_conflicts(ctx, alice):
    _, rid, _ = register(ctx, alice, b"abc")
    with ctx.catalog.session() as s:
        replica = s.get(Replica, rid)
        with pytest.raises(Conflict, match="cannot go from registered to stored"):
            transition(s, replica, S.stored)
    with ctx.catalog.session() as s1, ctx.catalog.session() as s2:
        a, b = s1.get(Replica, rid), s2.get(Replica, rid)
        transition(s1, a, S.uploading)
        s1.commit()
        with pytest.raises(Conflict, match="concurrently"):
            transition(s2, b, S.failed, error="late")


def test_matching_digests_verify_and_promote_with_md5(ctx, alice):
    data = b"x" * 100_000
    df_id, rid, token = register(ctx, alice, data)
    assert send(ctx, alice, token, data) == len(data)
    assert state_of(ctx, rid).state == S.staged  # waits for the client's digests
    answer = datafiles.complete(ctx, alice, df_id, hashlib.sha256(data).hexdigest(), None)
    assert answer.state == S.verified
    ctx.runner.run_all()
    replica = state_of(ctx, rid)
    assert replica.state == S.stored
    assert replica.box_id == ctx.store_box_id
    with ctx.store.open_read(replica.key) as f:
        assert f.read() == data
    with ctx.catalog.session() as s:
        public = datafiles.public(datafiles.get_owned(s, alice, df_id))
    assert public.md5 == hashlib.md5(data).hexdigest()
    assert public.checksum_source == "client"


def test_wrong_declared_checksum_fails_keeps_staged_bytes_then_retry_succeeds(ctx, alice):
    data = b"payload" * 1000
    df_id, rid, token = register(ctx, alice, data)
    send(ctx, alice, token, data)
    answer = datafiles.complete(ctx, alice, df_id, "0" * 64, None)
    assert answer.state == S.failed
    assert "sha256 mismatch" in (answer.error or "")
    replica = state_of(ctx, rid)
    assert ctx.staging.size(replica.key) == len(data)  # kept for inspection
    assert list(ctx.store.list()) == []
    # a retry re-enters uploading from byte zero
    _, rid2, token2 = register(ctx, alice, data)
    assert rid2 == rid
    assert state_of(ctx, rid).state == S.uploading
    send(ctx, alice, token2, data)
    assert datafiles.complete(ctx, alice, df_id, hashlib.sha256(data).hexdigest(), None).state in (
        S.verified,
        S.stored,
    )


def test_promotion_interrupted_after_the_move_finishes_on_retry(ctx, alice):
    data = b"abc" * 1000
    df_id, rid, token = register(ctx, alice, data)
    send(ctx, alice, token, data)
    datafiles.complete(ctx, alice, df_id, hashlib.sha256(data).hexdigest(), None)
    replica = state_of(ctx, rid)
    # the worker moved the bytes, then died before recording it
    with ctx.catalog.session() as s:
        dest = verify.store_key(datafiles.get_owned(s, alice, df_id))
    ctx.staging.promote(replica.key, ctx.store, dest, ("sha256",))
    ctx.runner.submitted.clear()
    assert state_of(ctx, rid).state == S.verified
    # the sweep finds it stuck and the promote task finishes the job
    ctx.settings.stale_after = 0.001
    time.sleep(0.01)
    assert verify.sweep(ctx)["promote"] == 1
    ctx.runner.run_all()
    assert state_of(ctx, rid).state == S.stored
    verify.promote_task(ctx, rid)  # idempotent
    assert state_of(ctx, rid).state == S.stored


def test_restart_mid_upload_rehashes_the_staged_prefix_once(ctx, alice):
    data = bytes(range(256)) * 4000
    df_id, rid, token = register(ctx, alice, data)
    half = len(data) // 2
    writer = PatchWriter.begin(ctx, alice, token, 0, None, None)
    writer.write(data[:half])
    writer.abort()
    ctx.forget_upload(token)  # what a restart loses: the in-memory hash
    assert send(ctx, alice, token, data, offset=half) == len(data)
    replica = state_of(ctx, rid)
    assert replica.staged_sha256 == hashlib.sha256(data).hexdigest()


def test_sweep_expires_abandoned_uploads_and_frees_their_bytes(ctx, alice):
    data = b"z" * 5000
    _, rid, token = register(ctx, alice, data)
    writer = PatchWriter.begin(ctx, alice, token, 0, None, None)
    writer.write(data[:1000])
    writer.abort()
    with ctx.catalog.session() as s:
        s.get(Replica, rid).expires_at = utcnow() - dt.timedelta(seconds=1)
    assert verify.sweep(ctx)["expired"] == 1
    replica = state_of(ctx, rid)
    assert replica.state == S.failed
    assert "expired" in replica.error
    assert ctx.staging.size(replica.key) is None


def test_http_upload_without_complete_is_not_verified_by_size(ctx, alice):
    data = b"q" * 3000
    _, rid, token = register(ctx, alice, data)
    send(ctx, alice, token, data)
    ctx.settings.stale_after = 0.001
    verify.sweep(ctx)
    ctx.runner.run_all()
    assert state_of(ctx, rid).state == S.staged  # waits for the client, never guesses


def test_server_killed_after_the_last_byte_completes_from_disk(ctx, alice):
    # given every byte written but the end never recorded (the process died)
    data = b"w" * 70_000
    df_id, rid, token = register(ctx, alice, data)
    with ctx.staging.open_write(state_of(ctx, rid).key, 0) as w:
        w.write(data)
    assert state_of(ctx, rid).state == S.registered
    # when the client comes back and completes
    answer = datafiles.complete(ctx, alice, df_id, hashlib.sha256(data).hexdigest(), None)
    # then the server takes the staged bytes as they are on disk
    assert answer.state == S.verified
    ctx.runner.run_all()
    assert state_of(ctx, rid).state == S.stored


def test_sweep_finishes_an_idle_upload_whose_bytes_all_arrived(ctx, alice):
    data = b"v" * 9_000
    _, rid, token = register(ctx, alice, data)
    writer = PatchWriter.begin(ctx, alice, token, 0, None, None)
    writer.write(data[:100])
    writer.abort()  # recorded as uploading with 100 bytes
    with ctx.staging.open_write(state_of(ctx, rid).key, 100) as w:
        w.write(data[100:])  # the rest landed, unrecorded
    ctx.settings.stale_after = 0.001
    time.sleep(0.01)
    assert verify.sweep(ctx)["verify"] == 1
    ctx.runner.run_all()
    replica = state_of(ctx, rid)
    assert replica.state == S.staged  # http: still waits for the client's digests
    assert replica.staged_sha256 == hashlib.sha256(data).hexdigest()


def test_complete_before_the_last_byte_is_a_conflict(ctx, alice):
    data = b"u" * 5_000
    df_id, _, token = register(ctx, alice, data)
    writer = PatchWriter.begin(ctx, alice, token, 0, None, None)
    writer.write(data[:10])
    writer.finish()
    with pytest.raises(Conflict, match="only 10 of 5000 bytes"):
        datafiles.complete(ctx, alice, df_id, hashlib.sha256(data).hexdigest(), None)
