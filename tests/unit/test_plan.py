from collections import Counter

from consumers.webr.plan import WORD_LIMITS, Category, document_rng, draw_plan


def test_branch_and_category_ratios_hold_over_many_documents() -> None:
    n = 30_000
    counts = Counter(draw_plan(document_rng(42, f"doc-{i}")).category for i in range(n))
    share = {c: counts[c] / n for c in Category}
    assert abs(share[Category.WI_ALL] - 1 / 3) < 0.015
    assert abs(share[Category.WI_PART] - 1 / 3) < 0.015
    assert abs(share[Category.WR_ALL] - 1 / 6) < 0.015
    assert abs(share[Category.WR_PART] - 1 / 6) < 0.015
    wi = share[Category.WI_ALL] + share[Category.WI_PART]
    assert abs(wi / (1 - wi) - 2.0) < 0.12


def test_plans_are_reproducible_per_document_and_seed() -> None:
    a = [draw_plan(document_rng(1, f"d{i}")) for i in range(50)]
    b = [draw_plan(document_rng(1, f"d{i}")) for i in reversed(range(50))][::-1]
    c = [draw_plan(document_rng(2, f"d{i}")) for i in range(50)]
    assert a == b
    assert a != c


def test_nouns_and_word_limits() -> None:
    plans = [draw_plan(document_rng(3, str(i))) for i in range(3000)]
    assert {p.words for p in plans} == set(WORD_LIMITS)
    assert {p.noun for p in plans if p.category.is_wi} == {"request", "instruction"}
    assert {p.noun for p in plans if not p.category.is_wi} == {"request", "instruction", "question"}
    assert 0.45 < sum(p.page_first for p in plans) / len(plans) < 0.55
