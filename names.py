"""Names are data, not instructions: the policy for text that comes from a customer list.

Whoever can put a name into the CRM must not be able to make the brand's number send text
or links of their choosing. A name loses its control characters (line breaks become a
space), its format characters (bidi overrides and isolates, zero-width spaces and joiners,
the byte-order mark) and repeated whitespace; a name that still looks like a link or an
address is refused, as is one longer than its column.
"""

from __future__ import annotations

import re
import unicodedata

#: Text that reads as a link in a message app: a scheme, "www.", or a host name with a
#: well-known top-level domain, with or without a path.
_LINK = re.compile(
    r"[a-z][a-z0-9+.-]*://|www\.|\b[\w-]+\.(?:com|net|org|info|biz|io|co|ly|me|app|link|xyz|top|site|online|club|"
    r"shop|store|gov|edu|us|uk|ca|fr|de|ru|cn|tk|ml|ga|cf|gq)\b|\w@\w",
    re.IGNORECASE,
)
_SPACES = re.compile(r"\s+")


class RefusedText(ValueError):
    """A value the policy refuses; ``code`` is the reason recorded with the row."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def clean_text(value: str | None, *, max_length: int) -> str:
    """``value`` without control and format characters, its whitespace collapsed and
    trimmed; RefusedText if it is longer than ``max_length`` after that."""
    text = unicodedata.normalize("NFC", value or "")
    if not text.isprintable():  # printable text (most names) has no control or format character
        kept = []
        for ch in text:
            category = unicodedata.category(ch)
            if category == "Cc" or ch in "\u2028\u2029":
                kept.append(" " if ch in "\t\n\r\v\f\x85\u2028\u2029" else "")
            elif category != "Cf":
                kept.append(ch)
        text = "".join(kept)
    cleaned = _SPACES.sub(" ", text).strip()
    if len(cleaned) > max_length:
        raise RefusedText(f"longer than {max_length} characters", code="too_long")
    return cleaned


def clean_name(value: str | None, *, max_length: int = 100) -> str:
    """A person's name as it may appear in a message, or RefusedText (``looks_like_link``)."""
    cleaned = clean_text(value, max_length=max_length)
    if _LINK.search(cleaned):
        raise RefusedText("looks like a link or an address", code="looks_like_link")
    return cleaned
