"""Short-link codes as the database knows them: which are in use, and new ones that are not.

The short-link path serves both a message's own link (``Message.link_code``) and a
customer's QR code (``QRCode.code``), so a code must mean one thing: the fan-out draws its
messages' codes, and the import its customers' QR codes, through ``unused_codes``.
"""

from __future__ import annotations

from collections import Counter

from connections import column_in
from links import new_link_code


def message_codes_in_use(codes: list[str]) -> set[str]:
    """The codes of ``codes`` that some message's link has (read through the partial index)."""
    return column_in("message", "link_code", list(codes), where='"link_code" IS NOT NULL')


def codes_in_use(codes: list[str]) -> set[str]:
    """The codes of ``codes`` that a message's link, a customer's QR code or a test send's
    link has."""
    codes = list(codes)
    return message_codes_in_use(codes) | column_in("qrcode", "code", codes) | column_in("trialsend", "link_code", codes)


def unused_codes(count: int) -> list[str]:
    """``count`` new codes, distinct, that no message and no customer has."""
    codes = [new_link_code() for _ in range(count)]
    while True:
        taken = codes_in_use(codes) | {code for code, n in Counter(codes).items() if n > 1}
        if not taken:
            return codes
        codes = [new_link_code() if code in taken else code for code in codes]
