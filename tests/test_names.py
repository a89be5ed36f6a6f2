"""The names policy (``names.py``) on its own: what is removed, what is refused."""

from __future__ import annotations

import pytest

from names import RefusedText, clean_name, clean_text


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Ada   Lovelace ", "Ada Lovelace"),
    ("Zoë", "Zoë"),
    ("Zoe\u0308", "Zoë"),  # combining diaeresis composed (NFC)
    ("Ada\u00a0Lovelace", "Ada Lovelace"),  # no-break space
    ("Ada\tLovelace\n", "Ada Lovelace"),
    ("Ada\u2028Lovelace", "Ada Lovelace"),
    ("Ad\u200ba", "Ada"),  # zero-width space
    ("\u202eadA", "adA"),  # right-to-left override
    ("\ufeffAda", "Ada"),  # byte-order mark
    ("Ada\x00\x07", "Ada"),
    ("Łukasz Żółć", "Łukasz Żółć"),
    (None, ""),
])
def test_control_and_format_characters_go_and_whitespace_collapses(raw, expected):
    assert clean_text(raw, max_length=100) == expected


@pytest.mark.parametrize("raw", ["http://evil.example", "www.evil", "go to evil.com now", "me@evil"])
def test_a_name_that_reads_as_a_link_is_refused(raw):
    with pytest.raises(RefusedText) as error:
        clean_name(raw)
    assert error.value.code == "looks_like_link"


def test_a_value_longer_than_its_column_after_cleaning_is_refused():
    assert clean_text("a" * 5 + "\u200b" * 10, max_length=5) == "aaaaa"
    with pytest.raises(RefusedText) as error:
        clean_text("a" * 6, max_length=5)
    assert error.value.code == "too_long"
