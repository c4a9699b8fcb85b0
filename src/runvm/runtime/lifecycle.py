"""The one lifecycle of containers and processes (runtime-spec "Lifecycle" and "Operations").

Contract: a container's state is its init process's; an exec process has the same states
without ``paused``. :data:`OPERATIONS` names the states each operation accepts and
:func:`require` refuses any other with a :class:`~runvm.errors.StateError` naming the
operation, the state and what it needs. :data:`TRANSITIONS` lists every change of state;
:func:`advance` refuses one that is not listed. The CLI's on-disk state and containerd's
task status are mappings of :class:`State` at the edges, never states of their own.

Sandbox (the pod's VM) states are :class:`SandboxState`: booting, ready, failed (the VM died
under its pod: its processes are stopped), stopped.
"""

from __future__ import annotations

import enum

from runvm.errors import StateError


class State(enum.StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


LIVE = frozenset({State.CREATED, State.RUNNING, State.PAUSED})

OPERATIONS: dict[str, frozenset[State]] = {
    "start": frozenset({State.CREATED}),
    "kill": LIVE,
    "delete": frozenset({State.STOPPED}),
    "exec": frozenset({State.CREATED, State.RUNNING}),
    "pause": frozenset({State.RUNNING}),
    "resume": frozenset({State.PAUSED}),
    "update": LIVE,
    "stats": LIVE | {State.STOPPED},
    "checkpoint": frozenset({State.RUNNING, State.PAUSED}),
}

TRANSITIONS: frozenset[tuple[State, State]] = frozenset({
    (State.CREATING, State.CREATED),
    (State.CREATING, State.STOPPED),  # create failed half-way
    (State.CREATED, State.RUNNING),
    (State.CREATED, State.STOPPED),  # killed before start, or a startContainer hook failed
    (State.RUNNING, State.PAUSED),
    (State.PAUSED, State.RUNNING),
    (State.RUNNING, State.STOPPED),
    (State.PAUSED, State.STOPPED),  # killed while frozen, or the VM died
})  # fmt: skip


class SandboxState(enum.StrEnum):
    BOOTING = "booting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


def require(operation: str, state: State, what: str) -> None:
    """Refuse ``operation`` on ``what`` (e.g. "container x") unless ``state`` accepts it."""
    allowed = OPERATIONS[operation]
    if state not in allowed:
        names = [s.value for s in State if s in allowed]
        raise StateError(f"cannot {operation} {what}", state.value, names)


def advance(current: State, new: State, what: str) -> State:
    """``new``, if ``current`` may change to it (the same state is no change)."""
    if current is not new and (current, new) not in TRANSITIONS:
        nexts = [s.value for s in State if (current, s) in TRANSITIONS]
        raise StateError(f"{what} cannot become {new.value}", current.value, nexts)
    return new
