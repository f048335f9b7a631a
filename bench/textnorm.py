"""Text normalisation and word error rate for the benchmarks (lowercase, no punctuation).

Used by corpus.py (verify) and accuracy.py; not a script.
"""

from __future__ import annotations

import re

import jiwer

_DASHES = re.compile(r"[\u2010-\u2015\-]+")
_PUNCT = re.compile(r"[^\w\s']+")
_QUOTES = re.compile(r"(?<!\w)'|'(?!\w)")


def normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = _DASHES.sub(" ", text)
    text = _PUNCT.sub(" ", text)
    text = _QUOTES.sub(" ", text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return normalise(text).split()


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: all references joined against all hypotheses joined."""
    ref = " ".join(normalise(r) for r in references)
    hyp = " ".join(normalise(h) for h in hypotheses)
    if not ref:
        return 0.0 if not hyp else 1.0
    return jiwer.wer(ref, hyp or "")


def measures(references: list[str], hypotheses: list[str]) -> jiwer.WordOutput:
    ref = " ".join(normalise(r) for r in references)
    hyp = " ".join(normalise(h) for h in hypotheses)
    return jiwer.process_words(ref, hyp)
