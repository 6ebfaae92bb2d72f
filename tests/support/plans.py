"""Which branch WebR takes for a document, drawn as the engine draws it (sectioning uses the generator first)."""

from __future__ import annotations

from consumers.webr.plan import Plan, document_rng, draw_plan
from consumers.webr.processor import WebRSettings
from consumers.webr.text import normalise, section


def plan_of(doc_id: str, text: str, settings: WebRSettings) -> Plan:
    """The plan `DocumentProcessor` will follow for this document (pages under the token cap)."""
    rng = document_rng(settings.seed, doc_id)
    section(normalise(text), rng, settings.keep_whole_probability)
    return draw_plan(rng)
