"""Short-link codes as the database knows them: which are in use, and new ones that are not.

The short-link path serves both a message's own link (``Message.link_code``) and a
customer's QR code (``QRCode.code``), so a code must mean one thing: the fan-out draws its
messages' codes, and the import its customers' QR codes, through ``unused_codes``.
"""

from __future__ import annotations

from collections import Counter

from links import new_link_code
from models import Message, QRCode, TrialSend


def message_codes_in_use(codes: list[str]) -> set[str]:
    """The codes of ``codes`` that some message's link has (read through the partial index)."""
    if not codes:
        return set()
    return {code for (code,) in Message.select(Message.link_code)
            .where(Message.link_code.is_null(False), Message.link_code.in_(codes)).tuples()}


def codes_in_use(codes: list[str]) -> set[str]:
    """The codes of ``codes`` that a message's link, a customer's QR code or a test send's
    link has."""
    if not codes:
        return set()
    return message_codes_in_use(codes) | {
        code for (code,) in QRCode.select(QRCode.code).where(QRCode.code.in_(codes)).tuples()} | {
        code for (code,) in TrialSend.select(TrialSend.link_code).where(TrialSend.link_code.in_(codes)).tuples()}


def unused_codes(count: int) -> list[str]:
    """``count`` new codes, distinct, that no message and no customer has."""
    codes = [new_link_code() for _ in range(count)]
    while True:
        taken = codes_in_use(codes) | {code for code, n in Counter(codes).items() if n > 1}
        if not taken:
            return codes
        codes = [new_link_code() if code in taken else code for code in codes]
