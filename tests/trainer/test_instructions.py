"""The shipped instruction-following checks accept replies that follow the instruction and refuse those that do not."""

from __future__ import annotations

import pytest

from trainer.instructions import CHECKS, load_instructions, passes


def test_every_shipped_prompt_uses_known_checks_and_ids_are_unique() -> None:
    items = load_instructions()
    assert len(items) >= 10
    assert len({i.id for i in items}) == len(items)
    assert all(c["kind"] in CHECKS for i in items for c in i.checks)


@pytest.mark.parametrize(
    ("prompt_id", "good", "bad"),
    [
        ("words-max-40", "Compost is rotted garden and kitchen waste used to feed soil.", "word " * 41),
        ("bullets-3", "- Wipe it\n- Oil it\n- Check it", "- Wipe it\n- Oil it"),
        ("json-city", '```json\n{"city": "Paris", "country": "France"}\n```', "The city is Paris, France."),
        ("keywords-bread", "Mix flour with water. Bake it in a hot oven.", "Mix the dough and bake it."),
        ("lowercase-library", "come to the library open day on saturday!", "Come to the library open day!"),
        ("no-commas", "Rivers run to the sea. They carry silt. Fish live in them.", "Rivers, like roads, connect."),
        ("ends-with", "Our grey cat is lost; please call us if you see her. Thank you.", "Please call us."),
        ("bullets-4-keyword", "- local food\n- fresh\n- cheap\n- friendly", "- fresh\n- cheap\n- friendly\n- fun"),
    ],
)
def test_check_passes_a_following_reply_and_fails_another(prompt_id: str, good: str, bad: str) -> None:
    item = next(i for i in load_instructions() if i.id == prompt_id)
    assert passes(item, good)
    assert not passes(item, bad)
