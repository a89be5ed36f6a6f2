"""What a campaign does with a message that does not fit in one segment.

Before measuring, characters with a GSM-7 look-alike are replaced (smart encoding, on unless
the campaign turns it off: ``smart_encoding.py``). A message that still does not fit is
handled by the campaign's ``on_overflow`` policy, chosen at creation:

- ``fail`` (the default): the message fails ``too_long``, as one segment is the rule;
- ``transliterate``: letters GSM-7 lacks become their closest GSM-7 letters (ë -> e), and
  the message is measured again; it fails only if it still does not fit;
- ``segments:N``: up to N segments are allowed (each is billed; the rate limiter charges
  every segment), N from 2 to ``MAX_SEGMENTS``.

Transliteration applies only to a message that would not fit otherwise, so a name keeps
its accents whenever its message fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from errors import MessageTooLong, PermanentError
from segments import SmsLength, first_non_gsm, measure
from smart_encoding import smart_encode, transliterate

FAIL, TRANSLITERATE = "fail", "transliterate"
#: Twilio refuses a body over 1,600 characters: 10 GSM-7 segments.
MAX_SEGMENTS = 10


@dataclass(frozen=True)
class FitRules:
    """How one campaign's messages are made to fit.

    Parameters:
      smart_encoding: replace look-alike characters before measuring.
      on_overflow: ``fail``, ``transliterate`` or ``segments:N``.
    """

    smart_encoding: bool = True
    on_overflow: str = FAIL

    def __post_init__(self) -> None:
        parse_overflow(self.on_overflow)

    @classmethod
    def of(cls, campaign) -> "FitRules":
        smart = getattr(campaign, "smart_encoding", True)
        return cls(smart_encoding=True if smart is None else bool(smart),
                   on_overflow=getattr(campaign, "on_overflow", None) or FAIL)

    @property
    def max_segments(self) -> int:
        return parse_overflow(self.on_overflow)[1]


def parse_overflow(value: str) -> tuple[str, int]:
    """(policy, segments allowed) of an ``on_overflow`` value; PermanentError naming what
    is wrong otherwise."""
    text = (value or "").strip().lower()
    if text in (FAIL, TRANSLITERATE):
        return text, 1
    name, _, count = text.partition(":")
    if name == "segments" and count.isdigit() and 2 <= int(count) <= MAX_SEGMENTS:
        return "segments", int(count)
    raise PermanentError(f"on-overflow {value!r} is not one of fail, transliterate, segments:N (N from 2 to "
                         f"{MAX_SEGMENTS})", code="invalid_overflow")


def overflow_column(value: str) -> str:
    """``value`` (an operator's ``--on-overflow``) as a campaign stores it: ``fail``,
    ``transliterate`` or ``segments:N``; PermanentError as ``parse_overflow``."""
    policy, allowed = parse_overflow(value)
    return policy if allowed == 1 else f"{policy}:{allowed}"


def fit(text: str, rules: FitRules = FitRules()) -> tuple[str, SmsLength]:
    """The text to send and its length under ``rules``; MessageTooLong if it cannot fit."""
    if rules.smart_encoding:
        text = smart_encode(text)
    length = measure(text)
    if length.segments <= rules.max_segments:
        return text, length
    if rules.on_overflow == TRANSLITERATE:
        plain = transliterate(text)
        plain_length = measure(plain)
        if plain_length.fits_one_segment:
            return plain, plain_length
        text, length = plain, plain_length
    raise MessageTooLong(_too_long(text, length, rules.max_segments), code="too_long")


def _too_long(text: str, length: SmsLength, allowed: int) -> str:
    unit = "GSM-7 septets" if length.encoding == "GSM-7" else "UCS-2 units"
    limit = f"{length.single_segment_max} for one segment" if allowed == 1 else \
        f"{allowed} segments ({length.segments} needed)"
    why = "" if length.encoding == "GSM-7" else f" (non-GSM character {first_non_gsm(text)!r})"
    return f"{length.units} {unit} > {limit}{why}"


__all__ = ["FAIL", "FitRules", "MAX_SEGMENTS", "TRANSLITERATE", "fit", "overflow_column", "parse_overflow"]
