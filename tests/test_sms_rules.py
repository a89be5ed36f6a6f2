"""Pure rules of sms.py: GSM-7/UCS-2 counting, templates, footer, phone numbers."""

from __future__ import annotations

import re

import phonenumbers
import pytest

from errors import InvalidPhone, MessageTooLong, TemplateError
from segments import GSM7_BASIC, GSM7_EXTENSION, SmsLength, measure
from sms import (
    FOOTER,
    PLACEHOLDERS,
    append_footer,
    compose,
    mask_phone,
    normalize_phone,
    render,
    template_fields,
    validate_template,
)

EMOJI = "\U0001F600"  # 😀, outside the BMP: a surrogate pair in UTF-16
CYR = "ж"  # UCS-2, one UTF-16 unit
FOOTER_COST = len(FOOTER) + 1  # "\n" + footer, all GSM-7 basic


# --- measure -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "units"),
    [
        ("", "GSM-7", 0),
        ("Hello", "GSM-7", 5),
        ("€", "GSM-7", 2),
        ("[x]", "GSM-7", 5),
        ("^{}\\~|\f", "GSM-7", 14),
        ("Ç", "GSM-7", 1),
        ("ç", "UCS-2", 1),
        ("Ça", "GSM-7", 2),
        ("“hi”", "UCS-2", 4),
        ("it’s", "UCS-2", 4),
        ("‘", "UCS-2", 1),
        (EMOJI, "UCS-2", 2),
        ("a" + EMOJI + "b", "UCS-2", 4),
        ("ΔΦΓΛΩΠΨΣΘΞ", "GSM-7", 10),
        ("\u0391", "UCS-2", 1),  # Greek capital Alpha, looks like "A"
        ("Β", "UCS-2", 1),  # Greek capital Beta
        ("a\r\nb", "GSM-7", 4),
        ("\x1b", "UCS-2", 1),  # ESC itself is not a character of the table
    ],
)
def test_measure_encoding_and_units(text, encoding, units):
    # When
    length = measure(text)
    # Then
    assert (length.encoding, length.units) == (encoding, units)
    assert length.single_segment_max == (160 if encoding == "GSM-7" else 70)


def test_gsm_tables_have_the_expected_sizes_and_costs():
    assert len(GSM7_BASIC) == 127 and len(GSM7_EXTENSION) == 10
    assert measure("".join(sorted(GSM7_BASIC))).units == 127
    assert measure("".join(sorted(GSM7_EXTENSION))).units == 20


def test_empty_text_is_one_segment():
    assert measure("") == SmsLength("GSM-7", 0, 1, 160)
    assert measure("").fits_one_segment


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 159 + "€", "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        (CYR * 70, "UCS-2", 70, 1),
        (CYR * 71, "UCS-2", 71, 2),
        (CYR * 68 + EMOJI, "UCS-2", 70, 1),
        (CYR * 69 + EMOJI, "UCS-2", 71, 2),
        (CYR * 134, "UCS-2", 134, 2),
        (CYR * 135, "UCS-2", 135, 3),
    ],
)
def test_segment_boundaries(text, encoding, units, segments):
    length = measure(text)
    assert (length.encoding, length.units, length.segments) == (encoding, units, segments)
    assert length.fits_one_segment is (segments == 1)


def test_extension_char_straddling_153_boundary_starts_a_new_part():
    # Given 306 septets: 2 full parts if nothing has to move
    plain = "a" * 306
    straddling = "a" * 152 + "€" + "a" * 152  # € would occupy septets 153 and 154
    # Then € is pushed whole into part 2, which overflows into part 3
    assert measure(plain).segments == 2
    assert measure(straddling).units == 306
    assert measure(straddling).segments == 3


def test_surrogate_pair_straddling_67_boundary_starts_a_new_part():
    straddling = CYR * 66 + EMOJI + CYR * 66  # 134 units, emoji at units 67-68
    assert measure(CYR * 134).segments == 2
    assert measure(straddling).units == 134
    assert measure(straddling).segments == 3


# --- templates ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hi {first_name}, see {short_url} {first_name}", {"first_name", "short_url"}),
        ("{name}{last_name}", {"name", "last_name"}),
        ("{{first_name}} is literal", set()),
        ("{{{name}}}", {"name"}),
        ("No placeholders", set()),
    ],
)
def test_template_fields(template, expected):
    assert template_fields(template) == expected


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("Hi {frist_name}", "unknown placeholder {frist_name}"),
        ("Hi {FIRST_NAME}", "unknown placeholder {FIRST_NAME}"),
        ("Hi { first_name }", "unknown placeholder { first_name }"),
        ("{first_name.__class__}", "attribute or index access"),
        ("{first_name[0]}", "attribute or index access"),
        ("{0}", "positional or empty"),
        ("{}", "positional or empty"),
        ("{first_name!r}", "conversion"),
        ("{first_name:>10}", "format spec"),
        ("Hi {first_name", "unbalanced '{'"),
        ("Hi {first_name:{name}}", "unbalanced '{'"),
        ("Hi first_name}", "unbalanced '}'"),
        ("Hi {first_name}}", "unbalanced '}'"),
    ],
)
def test_bad_templates_are_rejected_everywhere(template, fragment):
    for func in (template_fields, validate_template, lambda t: render(t, {"first_name": "Ann"})):
        with pytest.raises(TemplateError) as exc:
            func(template)
        assert fragment in exc.value.reason
        assert exc.value.code == "invalid_template"


def test_unknown_placeholder_message_lists_allowed_names():
    with pytest.raises(TemplateError) as exc:
        template_fields("Hi {frist_name}")
    assert "frist_name" in exc.value.reason
    assert all("{%s}" % name in exc.value.reason for name in PLACEHOLDERS)


@pytest.mark.parametrize("template", ["", "   ", "\r\n\t", None])
def test_validate_template_rejects_blank(template):
    with pytest.raises(TemplateError, match="empty"):
        validate_template(template)


def test_validate_template_accepts_good_template():
    assert validate_template("Hi {first_name}, {{sale}} at {short_url}") is None


# --- render ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("Hi {first_name}!", {"first_name": "Ann"}, "Hi Ann!"),
        ("{{literal}} {{first_name}}", {"first_name": "Ann"}, "{literal} {first_name}"),
        ("{{{first_name}}}", {"first_name": "Ann"}, "{Ann}"),
        ("Hi {first_name} {last_name}!", {}, "Hi  !"),
        ("Hi {first_name}!", {"first_name": None}, "Hi !"),
        ("Hi {name}", {"name": "{last_name}", "last_name": "X"}, "Hi {last_name}"),  # one pass only
        ("Hi {name}", {"name": 42}, "Hi 42"),
        ("a\r\nb\rc\n", {}, "a\nb\nc"),
        ("Hi {name}", {"name": "Ann\r\nLee"}, "Hi Ann\nLee"),
        ("Hi {first_name}  \n\n ", {"first_name": "Ann"}, "Hi Ann"),
        ("  keep leading", {}, "  keep leading"),
    ],
)
def test_render(template, values, expected):
    assert render(template, values) == expected


def test_render_only_coerces_values_with_str():
    # Given a value that explodes on formatting or on any attribute access
    class Hostile(str):
        def __format__(self, spec):
            raise AssertionError("__format__ called")

        def __getattribute__(self, name):
            raise AssertionError(f"attribute {name} accessed")

    # When / Then
    assert render("Hi {first_name}!", {"first_name": Hostile("Eve")}) == "Hi Eve!"


# --- footer and compose ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Hello", "Hello\n" + FOOTER),
        ("Hello  \n\n", "Hello\n" + FOOTER),
        ("", FOOTER),
        (" \n ", FOOTER),
        (FOOTER, FOOTER + "\n" + FOOTER),
        ("Reply STOP to unsubscribe. Sale!", "Reply STOP to unsubscribe. Sale!\n" + FOOTER),
    ],
)
def test_append_footer_always_appends(body, expected):
    assert append_footer(body) == expected


def test_compose_appends_footer_exactly_once_at_the_end():
    # When
    text, length = compose("Hi {first_name}, sale at {short_url}", {"first_name": "Ann", "short_url": "x.co/1"})
    # Then
    assert text == "Hi Ann, sale at x.co/1\n" + FOOTER
    assert text.count(FOOTER) == 1 and text.endswith(FOOTER)
    assert length == measure(text) and length.encoding == "GSM-7"


@pytest.mark.parametrize(
    ("body", "encoding", "units"),
    [
        ("a" * (160 - FOOTER_COST), "GSM-7", 160),
        ("a" * (158 - FOOTER_COST) + "€", "GSM-7", 160),
        ("ç" + "a" * (69 - FOOTER_COST), "UCS-2", 70),
        (EMOJI + "a" * (68 - FOOTER_COST), "UCS-2", 70),
    ],
)
def test_compose_accepts_exactly_one_segment(body, encoding, units):
    text, length = compose(body, {})
    assert (length.encoding, length.units, length.segments) == (encoding, units, 1)


@pytest.mark.parametrize(
    ("template", "values", "reason"),
    [
        ("a" * (161 - FOOTER_COST), {}, "161 GSM-7 septets > 160 for one segment"),
        ("a" * (159 - FOOTER_COST) + "[", {}, "161 GSM-7 septets > 160 for one segment"),
        ("Hi {name}", {"name": "a" * (158 - FOOTER_COST)}, "161 GSM-7 septets > 160 for one segment"),
        ("ç" + "a" * (70 - FOOTER_COST), {}, "71 UCS-2 units > 70 for one segment (non-GSM character 'ç')"),
        # smart encoding made the apostrophe GSM-7; the ç still needs UCS-2
        ("ÇA ’ç" + "a" * (66 - FOOTER_COST), {}, "71 UCS-2 units > 70 for one segment (non-GSM character 'ç')"),
        ("a" * (69 - FOOTER_COST) + EMOJI, {}, f"71 UCS-2 units > 70 for one segment (non-GSM character '{EMOJI}')"),
    ],
)
def test_compose_rejects_more_than_one_segment(template, values, reason):
    with pytest.raises(MessageTooLong) as exc:
        compose(template, values)
    assert exc.value.reason == reason
    assert exc.value.code == "too_long"


def test_compose_rejects_blank_template():
    with pytest.raises(TemplateError):
        compose("  ", {})


# --- phone numbers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+12125550123", "US", "+12125550123"),
        ("(212) 555-0123", "US", "+12125550123"),
        ("212.555.0123", "US", "+12125550123"),
        (" +1 (212) 555-0123\n", "US", "+12125550123"),
        ("07911 123456", "GB", "+447911123456"),
        ("+44 7911 123456", "US", "+447911123456"),
        # valid in another region of the country code than the default (+1: Canada, Jamaica)
        ("(416) 555-0123", "US", "+14165550123"),
        ("876 927 1234", "US", "+18769271234"),
        ("06 12 34 56 78", "FR", "+33612345678"),
    ],
)
def test_normalize_phone_valid(raw, region, expected):
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "missing_phone"),
        ("", "missing_phone"),
        ("  \t", "missing_phone"),
        ("12345", "invalid_phone"),
        ("+1555abc", "invalid_phone"),
        ("+1 212 555 CALL", "invalid_phone"),
        ("+1 212 555 0123 ext 4", "invalid_phone"),
        ("+1/212/555/0123", "invalid_phone"),
        ("+0123", "invalid_phone"),
        ("(099) 555-4567", "invalid_phone"),
        ("(212) 155-0123", "invalid_phone"),  # no region of +1 has exchanges starting with 1
        ("1" * 30, "invalid_phone"),
    ],
)
def test_normalize_phone_invalid(raw, code):
    with pytest.raises(InvalidPhone) as exc:
        normalize_phone(raw)
    assert exc.value.code == code
    # Then the reason is log-safe: at most the last 4 digits
    assert len(re.findall(r"\d", exc.value.reason)) <= 4


def test_letters_are_refused_even_when_phonenumbers_would_accept_them():
    # Given a vanity number phonenumbers maps to keypad digits
    assert phonenumbers.is_valid_number(phonenumbers.parse("+1 212 555 CALL", "US"))
    # Then we still refuse it
    with pytest.raises(InvalidPhone, match="only digits"):
        normalize_phone("+1 212 555 CALL")


def test_invalid_phone_reason_masks_all_but_last_4_digits():
    with pytest.raises(InvalidPhone) as exc:
        normalize_phone("(099) 555-4567")
    assert "invalid phone number ******4567" in exc.value.reason
    assert "0995554567" not in exc.value.reason and "099" not in exc.value.reason


@pytest.mark.parametrize(
    ("phone", "expected"),
    [
        ("+12125554567", "+1******4567"),
        ("+1 (212) 555-4567", "+1******4567"),
        ("+447911123456", "+4*******3456"),
        ("2125554567", "2*****4567"),
        ("12345678", "****5678"),
        ("12345", "****5"),
        ("1234", "****"),
        ("+1", "+*"),
        ("abc", "(no digits)"),
        ("", "(none)"),
        (None, "(none)"),
    ],
)
def test_mask_phone(phone, expected):
    masked = mask_phone(phone)
    assert masked == expected
    digits = re.sub(r"\D", "", phone or "")
    shown = re.findall(r"\d", masked)
    assert len(shown) <= (5 if len(digits) >= 10 else 4)
    assert not digits or len(digits) <= 4 or digits not in masked


@pytest.mark.parametrize("template, code_point", [
    ("Hi {first_name}\u202e, deals: {short_url}", "U+202E"),   # a bidi override
    ("Hi\u200b {first_name}: {short_url}", "U+200B"),          # a zero-width space
    ("Hi {first_name}\x07: {short_url}", "U+0007"),            # a control character
])
def test_a_template_with_an_invisible_character_is_refused(template, code_point):
    with pytest.raises(TemplateError, match=re.escape(f"invisible character {code_point}")):
        validate_template(template)


def test_a_template_keeps_line_breaks_and_emoji_sequences():
    validate_template("Hi {first_name}\n\U0001F469\u200d\U0001F4BB deals: {short_url}")
