"""Characters that look like GSM-7 ones, replaced before a message is measured (what
Twilio's Smart Encoding does), and the closest GSM-7 letters for names that still do not
fit (the ``transliterate`` policy).

One curly apostrophe turns a whole message into UCS-2, whose one segment holds 70 units
instead of 160: word processors and phones put them in templates and names all the time.
The substitutions are those Twilio documents for Smart Encoding ("List of characters
replaced by Smart Encoding"): quotation marks and apostrophes, dashes and hyphens, the
ellipsis, spaces of every width, fullwidth and small forms of ASCII, and invisible
characters (removed). A character GSM-7 has (é, ü, Ç, ß, ...) is never replaced.
"""

from __future__ import annotations

import unicodedata

import regex
from anyascii import anyascii

from segments import GSM7_ALL

#: target -> the characters replaced by it.
_GROUPS = {
    '"': "\u00ab\u00bb\u201c\u201d\u201e\u201f\u02ba\u02ee\u2033\u2036\u275d\u275e\u301d\u301e\uff02",
    "'": "\u2018\u2019\u201a\u201b\u2032\u2035\u02b9\u02bb\u02bc\u02bd\u02c8\u02ca\u02cb\u00b4\u0060\u275b\u275c"
         "\u0313\u0314\ufe10\ufe11\uff07",
    "-": "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\u23bc\u23bd\ufe63\uff0d\u2022",
    "...": "\u2026",
    " ": "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000\u2028\u2029",
    "": "\u200b\u200c\u200d\u2060\ufeff\u00ad",
    "/": "\u00f7\u2044\u2215\u29f8\uff0f",
    "\\": "\u29f5\u29f9\ufe68\uff3c",
    "1/4": "\u00bc",
    "1/2": "\u00bd",
    "3/4": "\u00be",
    "|": "\u2223\uff5c",
    "_": "\uff3f",
    "~": "\u02dc\u223c\uff5e",
    "^": "\u02c6\uff3e",
    "<": "\u2039\ufe64\uff1c",
    ">": "\u203a\ufe65\uff1e",
    "!!": "\u203c",
    ",": "\u3001\ufe50\ufe51\uff0c\uff64",
    ".": "\u3002\ufe52\uff0e\uff61",
    ":": "\u02d0\ua789\ufe13\uff1a",
    ";": "\u204f\ufe14\ufe54\uff1b",
    "!": "\u01c3\ufe15\ufe57\uff01",
    "?": "\ufe16\ufe56\uff1f",
    "*": "\u204e\u2217\u2731\ufe61\uff0a",
    "+": "\u02d6\ufe62\uff0b",
    "=": "\ua78a\ufe66\uff1d",
    "#": "\ufe5f\uff03",
    "%": "\ufe6a\uff05",
    "&": "\ufe60\uff06",
    "@": "\ufe6b\uff20",
    "$": "\ufe69\uff04",
    "(": "\ufe59\uff08\u2768\u276a",
    ")": "\ufe5a\uff09\u2769\u276b",
    "{": "\ufe5b\uff5b",
    "}": "\ufe5c\uff5d",
    "[": "\uff3b",
    "]": "\uff3d",
}
#: Fullwidth digits and Latin letters (Ａ -> A, ０ -> 0).
_FULLWIDTH = {chr(0xFF10 + i): str(i) for i in range(10)}
_FULLWIDTH.update({chr(0xFF21 + i): chr(ord("A") + i) for i in range(26)})
_FULLWIDTH.update({chr(0xFF41 + i): chr(ord("a") + i) for i in range(26)})

SUBSTITUTIONS: dict[str, str] = {ch: target for target, chars in _GROUPS.items() for ch in chars} | _FULLWIDTH
_TABLE = str.maketrans(SUBSTITUTIONS)
_GRAPHEME = regex.compile(r"\X")


def smart_encode(text: str) -> str:
    """``text`` with every character that has a GSM-7 look-alike replaced by it; the rest
    (GSM-7 characters, and those without one: ë, Ł, emoji) unchanged."""
    if set(text) <= GSM7_ALL:
        return text
    return text.translate(_TABLE)


def transliterate(text: str) -> str:
    """``text`` with each letter GSM-7 lacks written as its closest GSM-7 letters (ë -> e,
    Ł -> L, ç -> c, œ -> oe, Дмитрий -> Dmitriy), keeping the letters GSM-7 has (é, ü, Ç,
    ß) and everything that is not a letter: an emoji stays as it is (with its variation
    selector, skin tone or joiners), and keeps the message in UCS-2. A letter is taken with
    its combining accents (one grapheme cluster): e + U+0301 is é, which GSM-7 has."""
    if set(text) <= GSM7_ALL:
        return text
    out = []
    for cluster in _GRAPHEME.findall(text):
        composed = unicodedata.normalize("NFC", cluster)
        if set(composed) <= GSM7_ALL:
            out.append(composed)
        elif unicodedata.category(composed[0]).startswith("L"):
            ascii_form = anyascii(composed)
            out.append(ascii_form if ascii_form.isalpha() and set(ascii_form) <= GSM7_ALL else cluster)
        else:
            out.append(cluster)
    return "".join(out)


__all__ = ["SUBSTITUTIONS", "smart_encode", "transliterate"]
