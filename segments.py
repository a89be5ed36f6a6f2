"""How Twilio counts a message: its encoding (GSM-7 or UCS-2), its units and its segments.

A message whose characters are all in the GSM 03.38 alphabet is sent in GSM-7: 160 septets
in one segment, 153 per segment of a longer one (each segment gives 7 to its header); an
extension character (``€``, ``[``, ...) costs two septets, its escape and itself. Any
other character makes the whole message UCS-2: 70 UTF-16 code units in one segment, 67 per
segment of a longer one; a character beyond the Basic Multilingual Plane (most emoji) is
a surrogate pair of two units.

A segment boundary never falls inside a character (an escape pair, a surrogate pair) nor
inside a grapheme cluster (a letter with its combining accents, a flag, an emoji with its
skin tone or a ZWJ family), as Twilio's segment calculator splits them: a longer message
can need one segment more than ``ceil(units / part_max)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import regex

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e"  # Δ_ΦΓΛΩΠΨΣΘΞ
    "ÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""GSM 03.38 default alphabet minus ESC: 127 characters costing one septet each."""

GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
"""Reached through ESC, so each costs two septets."""

GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE_MAX, GSM7_PART_MAX = 160, 153
UCS2_SINGLE_MAX, UCS2_PART_MAX = 70, 67

_GRAPHEME = regex.compile(r"\X")


@dataclass(frozen=True)
class SmsLength:
    """How Twilio will count a message.

    ``units`` are septets for GSM-7 (extension characters count 2) and UTF-16 code
    units for UCS-2. An empty message is 0 units but still 1 segment, as it is billed.
    """

    encoding: str
    units: int
    segments: int
    single_segment_max: int

    @property
    def fits_one_segment(self) -> bool:
        return self.segments == 1


def is_gsm7(text: str) -> bool:
    return set(text) <= GSM7_ALL


def first_non_gsm(text: str) -> str | None:
    """The character that forces UCS-2, so an error can tell the author what to replace."""
    for ch in text:
        if ch not in GSM7_ALL:
            return ch
    return None


def _count_parts(costs: Iterable[int], part_max: int) -> int:
    """Fill parts greedily: a unit of ``costs`` (a grapheme cluster) is never split.
    A cluster longer than a whole part (a long run of combining marks) starts a part of its
    own and takes as many as it needs."""
    parts, used = 1, 0
    for cost in costs:
        if used + cost > part_max:
            if used:
                parts += 1
            while cost > part_max:
                parts, cost = parts + 1, cost - part_max
            used = cost
        else:
            used += cost
    return parts


def _gsm7_units(chunk: str) -> int:
    return len(chunk) + sum(1 for ch in chunk if ch in GSM7_EXTENSION)


def _ucs2_units(chunk: str) -> int:
    return len(chunk) + sum(1 for ch in chunk if ord(ch) > 0xFFFF)  # surrogate pairs


def measure(text: str) -> SmsLength:
    """Encoding, length and segment count of ``text`` exactly as sent (no normalisation).

    Works on the set of characters first, so the usual message (one segment) is measured
    without a Python loop over its characters; the fan-out measures every customer's.
    """
    chars = set(text)
    if chars <= GSM7_ALL:
        doubled = chars & GSM7_EXTENSION
        units = len(text) + sum(text.count(ch) for ch in doubled)
        encoding, single_max, part_max, cost = "GSM-7", GSM7_SINGLE_MAX, GSM7_PART_MAX, _gsm7_units
    else:
        units = len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)
        encoding, single_max, part_max, cost = "UCS-2", UCS2_SINGLE_MAX, UCS2_PART_MAX, _ucs2_units
    segments = 1 if units <= single_max else _count_parts(map(cost, _GRAPHEME.findall(text)), part_max)
    return SmsLength(encoding=encoding, units=units, segments=segments, single_segment_max=single_max)


__all__ = ["GSM7_ALL", "GSM7_BASIC", "GSM7_EXTENSION", "GSM7_PART_MAX", "GSM7_SINGLE_MAX", "SmsLength",
           "UCS2_PART_MAX", "UCS2_SINGLE_MAX", "first_non_gsm", "is_gsm7", "measure"]
