import pytest

from consumers.webr.state import DocState, DocumentStateMachine, IllegalTransition


def test_wi_and_wr_paths() -> None:
    wi = DocumentStateMachine("a")
    for s in (
        DocState.PERSONA,
        DocState.SECTIONED,
        DocState.REQUEST,
        DocState.RESPONSE,
        DocState.FILTER,
        DocState.DONE,
    ):
        wi.advance(s)
    assert wi.terminal
    wr = DocumentStateMachine("b")
    for s in (DocState.PERSONA, DocState.SECTIONED, DocState.REQUEST, DocState.ROLLOUT, DocState.REFINE):
        wr.advance(s)
    wr.advance(DocState.REJECTED)
    assert wr.terminal and wr.history[-2] == DocState.REFINE


def test_skipping_a_step_is_a_bug() -> None:
    m = DocumentStateMachine("c")
    with pytest.raises(IllegalTransition):
        m.advance(DocState.REQUEST)
    m.advance(DocState.REJECTED)
    with pytest.raises(IllegalTransition):
        m.advance(DocState.PERSONA)
