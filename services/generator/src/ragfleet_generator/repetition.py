"""Spotting a generation that has fallen into a loop, so it can be cut instead of running to
``max_tokens``.

Small models decoding greedily can repeat a sentence, or run through "[1] [2] [3] ..." until the
limit. Digits are compared as one symbol, so a counting loop is a repetition too.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"\d+")


class RepetitionGuard:
    """Fed the text as it streams; ``looping`` turns true once the text ends in one unit of
    1..``max_unit`` characters repeated back to back at least ``min_repeats`` times and over at
    least ``min_chars`` characters (so a short unit must repeat more often: a run of dashes or
    of citation markers is cut after ``min_chars``, a repeated sentence at its third copy)."""

    def __init__(self, min_repeats: int = 3, min_chars: int = 48, max_unit: int = 200) -> None:
        if min_repeats < 2 or min_chars < 1 or max_unit < 1:
            raise ValueError("min_repeats >= 2, min_chars >= 1 and max_unit >= 1 are required")
        self._min_repeats = min_repeats
        self._min_chars = min_chars
        self._max_unit = max_unit
        self._text = ""

    def feed(self, piece: str) -> bool:
        """Adds ``piece``; True when the text now ends in a loop."""
        self._text += piece
        return self.looping

    @property
    def looping(self) -> bool:
        # Only the tail can hold the loop: the longest span checked is max_unit * repeats.
        window = self._max_unit * self._min_repeats + self._min_chars
        text = _DIGITS.sub("#", self._text[-2 * window :])
        for unit in range(1, min(self._max_unit, len(text) // self._min_repeats) + 1):
            repeats = max(self._min_repeats, -(-self._min_chars // unit))
            span = unit * repeats
            if span > len(text):
                continue
            tail = text[-span:]
            if tail == tail[-unit:] * repeats:
                return True
        return False
