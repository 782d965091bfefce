"""The replica state machine: the only way a replica changes state."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, update
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


@dataclass(frozen=True)
class Move:
    """One replica's walk along the state machine, recorded by :func:`advance_many`.

    ``path`` lists every state passed through, in order; only the last is
    written, with ``values``. Used where the intermediate states live and die
    inside one request (a bundle of small files: staged, verified, stored).
    """

    replica_id: int
    current: ReplicaState
    path: tuple[ReplicaState, ...]
    values: dict[str, Any] = field(default_factory=dict)


def advance_many(session: Session, moves: list[Move]) -> None:
    """Record many moves with one compare-and-set statement per shape.

    Every path is checked against the state machine first; if any replica is
    no longer in its ``current`` state the whole batch raises :class:`Conflict`
    (and the caller's transaction rolls back).
    """
    now = utcnow()
    groups: dict[tuple[str, tuple[str, ...]], list[dict[str, Any]]] = defaultdict(list)
    for move in moves:
        state = move.current
        for step in move.path:
            if not can_move(state, step):
                raise Conflict(f"replica {move.replica_id} cannot go from {state} to {step}")
            state = step
        values = {"state": state.value, "updated_at": now, **move.values}
        if state is not S.failed:
            values.setdefault("error", None)
        shape = (move.current.value, tuple(sorted(values)))
        groups[shape].append({"b_id": move.replica_id, **{f"v_{k}": v for k, v in values.items()}})
    table = Replica.__table__
    assert isinstance(table, Table)
    for (current, columns), rows in groups.items():
        stmt = (
            update(table)
            .where(table.c.id == bindparam("b_id"), table.c.state == current)
            .values({name: bindparam(f"v_{name}") for name in columns})
        )
        result = session.connection().execute(stmt, rows)
        if result.rowcount != len(rows):
            raise Conflict(f"{len(rows) - result.rowcount} replicas changed state concurrently")
