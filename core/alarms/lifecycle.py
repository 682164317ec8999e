"""Alert lifecycle: which state changes are legal, and who may make them.

    active --ack--> acknowledged
    active | acknowledged --clear (engine)--> cleared --close (person)--> closed

One open (active or acknowledged) alert per (rule, device, metric): a repeated trigger updates it; a
trigger after it cleared opens a new alert.
"""
from __future__ import annotations

from enum import StrEnum


class AlertState(StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    CLOSED = "closed"


class Action(StrEnum):
    ACK = "acknowledged"
    CLEAR = "cleared"
    CLOSE = "closed"


OPEN_STATES = (AlertState.ACTIVE, AlertState.ACKNOWLEDGED)

_ALLOWED: dict[Action, tuple[AlertState, ...]] = {
    Action.ACK: (AlertState.ACTIVE,),
    Action.CLEAR: (AlertState.ACTIVE, AlertState.ACKNOWLEDGED),
    Action.CLOSE: (AlertState.CLEARED,),
}
_RESULT = {Action.ACK: AlertState.ACKNOWLEDGED, Action.CLEAR: AlertState.CLEARED, Action.CLOSE: AlertState.CLOSED}


class IllegalTransition(ValueError):
    def __init__(self, state: str, action: Action) -> None:
        allowed = ", ".join(s.value for s in _ALLOWED[action])
        super().__init__(f"cannot {action.name.lower()} an alert that is {state} (allowed from: {allowed})")
        self.state = state
        self.action = action


def allowed_from(action: Action) -> tuple[AlertState, ...]:
    return _ALLOWED[action]


def apply(state: str, action: Action) -> AlertState:
    """The state after ``action``; raises IllegalTransition for an illegal move."""
    if AlertState(state) not in _ALLOWED[action]:
        raise IllegalTransition(state, action)
    return _RESULT[action]
