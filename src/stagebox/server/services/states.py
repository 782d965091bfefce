"""The replica state machine: the only way a replica changes state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from stagebox.errors import Conflict
from stagebox.server.db.models import Replica, ReplicaState, utcnow

S = ReplicaState

ALLOWED: dict[ReplicaState, frozenset[ReplicaState]] = {
    S.registered: frozenset({S.uploading, S.staged, S.failed}),
    S.uploading: frozenset({S.uploading, S.staged, S.failed}),
    S.staged: frozenset({S.verified, S.failed, S.uploading}),
    S.verified: frozenset({S.stored, S.failed}),
    S.stored: frozenset(),
    S.failed: frozenset({S.uploading, S.registered}),
}


def can_move(current: str, target: ReplicaState) -> bool:
    return target in ALLOWED[ReplicaState(current)]


def transition(session: Session, replica: Replica, target: ReplicaState, **values: Any) -> None:
    """Move ``replica`` to ``target`` if nobody moved it first.

    A compare-and-set on the current state: two workers racing on the same
    replica cannot both win, and an illegal move raises :class:`Conflict`.
    """
    current = ReplicaState(replica.state)
    if not can_move(current, target):
        raise Conflict(f"replica {replica.id} cannot go from {current} to {target}")
    values = {"state": target.value, "updated_at": utcnow(), **values}
    if target is not S.failed and "error" not in values:
        values["error"] = None
    result = session.execute(
        update(Replica)
        .where(Replica.id == replica.id, Replica.state == current.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"replica {replica.id} changed state concurrently")
    session.refresh(replica)
