from datetime import UTC, datetime

from consumers.webr.dedup import DedupIndex, DedupStage
from core.outcomes import PairRow, Rejection, SourceRef, Usage

BASE = (
    "Turn the article about credit unions into a briefing for a city councillor with five bullet points, "
    "each under twenty words, covering the interest cap, membership numbers and the funding proposal"
)


def test_near_duplicate_requests_are_dropped_per_branch() -> None:
    index = DedupIndex()
    assert index.check_and_add("WI", BASE, "p1") is None
    assert index.check_and_add("WI", BASE + " please", "p2") == "near_duplicate_request"
    # the other branch has its own index
    assert index.check_and_add("WR", BASE, "p3") is None
    assert index.check_and_add("WI", "Write a haiku about the harbour at dawn, in a melancholic tone", "p4") is None
    assert len(index) == 3


def test_wr_page_used_once() -> None:
    index = DedupIndex()
    assert index.check_and_add("WR", "What is a credit union and why join one?", "page") is None
    assert index.check_and_add("WR", "How much does the new stadium cost the city?", "page") == "duplicate_page"
    # WI pairs may share a page with anything
    assert index.check_and_add("WI", "List the stadium costs in a table", "page") is None


def test_rebuilt_index_keeps_earlier_decisions() -> None:
    index = DedupIndex()
    index.add_existing("WI", BASE, "p1")
    index.add_existing("WR", "Why do rates rise?", "p9")
    assert index.check_and_add("WI", BASE, "p2") == "near_duplicate_request"
    assert index.check_and_add("WR", "Something else entirely about gardening tools", "p9") == "duplicate_page"


def pair(offset: int, request: str, branch: str = "WI", page: str = "p") -> PairRow:
    return PairRow(
        f"d{offset}",
        "pid",
        "instr",
        "answer",
        request,
        branch,
        f"{branch}_all",
        "persona",
        "https://x.test",
        "m",
        "v1",
        0,
        10,
        False,
        Usage(3, 100, 20, 0, 0.5, 4),
        SourceRef("t", 0, offset),
        datetime.now(UTC),
        page_hash=page,
    )


def test_stage_rejects_a_near_duplicate_at_dedup_keeping_its_usage_and_source() -> None:
    stage = DedupStage()
    first = pair(1, BASE)
    assert stage.admit(first) is first
    duplicate = stage.admit(pair(2, BASE + " please", page="q"))
    assert isinstance(duplicate, Rejection)
    assert (duplicate.doc_id, duplicate.stage, duplicate.reason) == ("d2", "dedup", "near_duplicate_request")
    assert duplicate.usage == Usage(3, 100, 20, 0, 0.5, 4), "the calls paid for a duplicate stay accounted"
    assert duplicate.ref == SourceRef("t", 0, 2) and duplicate.source_url == "https://x.test"
    assert duplicate.detail == (BASE + " please")[:200]
    wr = stage.admit(pair(3, "Why do rates rise?", branch="WR", page="same"))
    assert isinstance(wr, PairRow)
    again = stage.admit(pair(4, "Who pays for the stadium?", branch="WR", page="same"))
    assert isinstance(again, Rejection) and again.reason == "duplicate_page"
    rejected = Rejection("d5", "request", "refused_request", "", SourceRef("t", 0, 5), datetime.now(UTC))
    assert stage.admit(rejected) is rejected, "only pairs are judged"
    assert len(stage) == 2


def test_stage_recalls_committed_rows_and_forgets_everything_on_reset() -> None:
    stage = DedupStage()
    stage.recall("WI", BASE, "p1")
    assert isinstance(stage.admit(pair(1, BASE)), Rejection)
    stage.reset()
    assert len(stage) == 0
    assert isinstance(stage.admit(pair(1, BASE)), PairRow)


def _variant(base: list[str], changed: int, tag: str) -> str:
    """`base` with its last `changed` words replaced by words of its own."""
    return " ".join(base[: len(base) - changed] + [f"{tag}{k}" for k in range(changed)])


def test_signatures_track_the_true_overlap_of_requests() -> None:
    """The MinHash hash function decides what counts as a near duplicate: requests sharing ~80% of their
    3-word shingles are caught, those sharing ~30% are not, for every one of many unrelated requests."""
    caught = passed = 0
    for i in range(30):
        base = [f"w{i}x{j}" for j in range(100)]
        index = DedupIndex()
        assert index.check_and_add("WI", " ".join(base), "p") is None
        # 10 of 100 words changed: 88 of 108 distinct shingles shared (Jaccard 0.81 > 0.7)
        caught += index.check_and_add("WI", _variant(base, 10, "near"), "p") == "near_duplicate_request"
        # 50 of 100 words changed: 48 of 148 shared (Jaccard 0.32)
        passed += index.check_and_add("WI", _variant(base, 50, "far"), "p") is None
    assert caught >= 28 and passed == 30, (caught, passed)
