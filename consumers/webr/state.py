"""The per-document state machine: explicit states, guarded transitions, a terminal failure with a reason.

"Where is this document and why" is always answerable: a rejection carries the state it stopped in.
"""

from __future__ import annotations

from enum import StrEnum

from core.exceptions import PipelineError


class DocState(StrEnum):
    RECEIVED = "received"
    PERSONA = "persona"
    SECTIONED = "sectioned"
    REQUEST = "request"
    RESPONSE = "response"  # WI: execute the request on the page
    ROLLOUT = "rollout"  # WR: answer without the page
    REFINE = "refine"  # WR: improve the answer with the page
    FILTER = "filter"
    DONE = "done"  # a pair; the pipeline's dedup stage may still reject it (stage "dedup")
    REJECTED = "rejected"


_NEXT: dict[DocState, frozenset[DocState]] = {
    DocState.RECEIVED: frozenset({DocState.PERSONA}),
    DocState.PERSONA: frozenset({DocState.SECTIONED}),
    DocState.SECTIONED: frozenset({DocState.REQUEST}),
    DocState.REQUEST: frozenset({DocState.RESPONSE, DocState.ROLLOUT}),
    DocState.RESPONSE: frozenset({DocState.FILTER}),
    DocState.ROLLOUT: frozenset({DocState.REFINE}),
    DocState.REFINE: frozenset({DocState.FILTER}),
    DocState.FILTER: frozenset({DocState.DONE}),
    DocState.DONE: frozenset(),
    DocState.REJECTED: frozenset(),
}


class IllegalTransition(PipelineError):
    """A bug: the engine tried to skip or repeat a step."""


class DocumentStateMachine:
    """Tracks one document's progress; any non-terminal state may end in REJECTED."""

    def __init__(self, doc_id: str) -> None:
        self.doc_id = doc_id
        self.state = DocState.RECEIVED
        self.history: list[DocState] = [DocState.RECEIVED]

    def advance(self, new: DocState) -> None:
        allowed = _NEXT[self.state] | ({DocState.REJECTED} if _NEXT[self.state] else frozenset())
        if new not in allowed:
            raise IllegalTransition(f"{self.doc_id}: {self.state} -> {new} is not a step of WebR")
        self.state = new
        self.history.append(new)

    @property
    def terminal(self) -> bool:
        return not _NEXT[self.state]
