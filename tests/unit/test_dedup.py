from consumers.webr.dedup import DedupIndex

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
