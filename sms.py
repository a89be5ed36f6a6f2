"""SMS rules: template checking and rendering, GSM-7/UCS-2 length, footer, phone numbers.

Everything here is a pure function so the worker, the API and the tests agree on one
definition of "what will be sent and how Twilio will count it". Every campaign message
must fit in ONE segment once the opt-out footer is added: a second segment doubles the
cost and a split message may arrive out of order on some handsets.
"""

from __future__ import annotations

import functools
import threading
import re
import unicodedata
from collections.abc import Mapping

import phonenumbers

from errors import InvalidPhone, TemplateError
from overflow import FitRules, fit
from segments import SmsLength

FOOTER = "Reply STOP to unsubscribe"
PLACEHOLDERS = frozenset({"first_name", "last_name", "name", "short_url"})

_ALLOWED_PHONE_CHARS = re.compile(r"[0-9 +().\-]+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASCII_DIGITS = frozenset("0123456789")


def _allowed_list(attributes: frozenset[str] = frozenset()) -> str:
    listed = ", ".join("{%s}" % name for name in sorted(PLACEHOLDERS))
    if attributes:
        listed += "; custom attributes: " + ", ".join("{%s}" % name for name in sorted(attributes)[:20])
        listed += ", ..." if len(attributes) > 20 else ""
    return listed


def _field_error(field: str, pos: int, attributes: frozenset[str]) -> TemplateError | None:
    """Why ``{field}`` is refused, or None when it is an allowed placeholder (one of
    ``PLACEHOLDERS`` or of the declared custom ``attributes``).

    Only bare whitelisted names are accepted: attribute/index access, conversions and
    format specs would let a template reach into objects or reshape values.
    """
    where = f"{{{field}}} at position {pos}"
    if field == "" or field.isdigit():
        reason = f"positional or empty field {where} is not allowed; use a named placeholder"
    elif "!" in field:
        reason = f"conversion in {where} is not allowed"
    elif ":" in field:
        reason = f"format spec in {where} is not allowed"
    elif "." in field or "[" in field or "]" in field:
        reason = f"attribute or index access in {where} is not allowed"
    elif not _IDENTIFIER.fullmatch(field) or (field not in PLACEHOLDERS and field not in attributes):
        reason = f"unknown placeholder {where}"
    else:
        return None
    return TemplateError(f"{reason}; allowed placeholders: {_allowed_list(attributes)}", code="invalid_template")


def _tokens(template: str, attributes: frozenset[str] = frozenset()) -> tuple[tuple[str, bool], ...]:
    """Split into (text, is_placeholder) pairs, rejecting anything not whitelisted (the
    placeholders and the declared custom ``attributes``).

    Remembered per template: a campaign renders the same one for every customer.
    """
    if not isinstance(template, str):
        raise TemplateError(f"template must be text, not {type(template).__name__}", code="invalid_template")
    return _scan(template, frozenset(attributes))


@functools.lru_cache(maxsize=256)
def _scan(template: str, attributes: frozenset[str]) -> tuple[tuple[str, bool], ...]:
    """``_tokens`` without the cache.

    A hand-written scanner rather than ``string.Formatter`` so that render and
    validation share one strict grammar: ``{{``/``}}`` are literal braces and a field
    is everything up to the next ``}``.
    """
    tokens: list[tuple[str, bool]] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch in "{}" and template.startswith(ch * 2, i):
            literal.append(ch)
            i += 2
        elif ch == "}":
            raise TemplateError(f"unbalanced '}}' at position {i}; write '}}}}' for a literal brace",
                                code="invalid_template")
        elif ch == "{":
            end = template.find("}", i + 1)
            nested = template.find("{", i + 1)
            if end == -1 or (nested != -1 and nested < end):
                raise TemplateError(f"unbalanced '{{' at position {i}; write '{{{{' for a literal brace",
                                    code="invalid_template")
            field = template[i + 1:end]
            error = _field_error(field, i, attributes)
            if error is not None:
                raise error
            if literal:
                tokens.append(("".join(literal), False))
                literal = []
            tokens.append((field, True))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    if literal:
        tokens.append(("".join(literal), False))
    return tuple(tokens)


def template_fields(template: str, attributes: frozenset[str] = frozenset()) -> set[str]:
    """Placeholder names used by ``template``; raises TemplateError if any part is not
    allowed (a placeholder that is neither built in nor one of the declared ``attributes``)."""
    return {text for text, is_field in _tokens(template, attributes) if is_field}


def attribute_fields(template: str, attributes: frozenset[str] = frozenset()) -> frozenset[str]:
    """The custom attributes ``template`` uses (its placeholders that are not built in)."""
    return frozenset(template_fields(template, attributes) - PLACEHOLDERS)


def validate_template(template: str, attributes: frozenset[str] = frozenset()) -> None:
    """Reject a template at campaign creation rather than failing every message later: an
    empty one, a placeholder not allowed, or an invisible character (a control character
    other than a line break, a bidi override, a zero-width space or joiner), which would
    make the text read otherwise than it was reviewed (the policy names follow too)."""
    if not isinstance(template, str) or not template.strip():
        raise TemplateError("template is empty", code="invalid_template")
    for pos, ch in enumerate(template):
        category = unicodedata.category(ch)
        if ch == "\u200d" and 0 < pos < len(template) - 1 and {unicodedata.category(template[pos - 1]),
                                                               unicodedata.category(template[pos + 1])} <= {"So", "Sk", "Mn"}:
            continue  # the joiner inside an emoji sequence (a family, a profession) is visible
        if (category == "Cc" and ch not in "\n\r\t") or category == "Cf" or ch in "\u2028\u2029":
            raise TemplateError(f"template has an invisible character U+{ord(ch):04X} at position {pos}: remove it",
                                code="invalid_template")
    template_fields(template, attributes)


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill whitelisted placeholders in one pass, so a value is never re-parsed as a template.

    Values are only passed through ``str()``; missing or None values render as "".
    Line endings become LF because CR costs a septet and shows as a blank line on
    some handsets; trailing whitespace is dropped because it costs units for nothing.
    """
    parts = []
    for text, is_field in _tokens(template, frozenset(values.keys() - PLACEHOLDERS)):
        if is_field:
            value = values.get(text)
            parts.append("" if value is None else str(value))
        else:
            parts.append(text)
    return "".join(parts).replace("\r\n", "\n").replace("\r", "\n").rstrip()


def append_footer(body: str, footer: str = FOOTER) -> str:
    """Always add the opt-out footer (the campaign language's, ``languages.py``; English by
    default): compliance requires it even if the body mentions STOP."""
    body = body.rstrip()
    return f"{body}\n{footer}" if body else footer


def compose(template: str, values: Mapping[str, str], rules: FitRules = FitRules(), *,
            footer: str = FOOTER) -> tuple[str, SmsLength]:
    """The exact text to send and its length, ``footer`` appended; raises MessageTooLong if
    it cannot fit under the campaign's ``rules`` (smart encoding, then one segment,
    transliteration or up to N segments: ``overflow.py``).

    The template is validated first (an empty one is refused) so a campaign never
    sends the footer alone by mistake. ``footer`` is measured with the rest.
    """
    validate_template(template, frozenset(values.keys() - PLACEHOLDERS))
    return fit(append_footer(render(template, values), footer), rules)


def _masked_digits(digits: str) -> str:
    """Show at most the last 4 digits and always hide at least 4, so short input stays masked."""
    if not digits:
        return "(no digits)"
    shown = max(0, min(4, len(digits) - 4))
    return "*" * (len(digits) - shown) + digits[len(digits) - shown:]


def mask_phone(phone: str | None) -> str:
    """A log-safe form of a phone number: "+12125554567" -> "+1******4567".

    The first digit (roughly the country) is kept only for numbers of 10+ digits, so
    no output ever shows more than 5 digits, and short input no more than 4.
    """
    if not isinstance(phone, str) or not phone.strip():
        return "(none)"
    digits = "".join(ch for ch in phone if ch in _ASCII_DIGITS)
    if not digits:
        return _masked_digits(digits)
    plus = "+" if phone.strip().startswith("+") else ""
    if len(digits) >= 10:
        return plus + digits[0] + "*" * (len(digits) - 5) + digits[-4:]
    return plus + _masked_digits(digits)


def normalize_phone(raw: str | None, default_region: str = "US") -> str:
    """E.164 form of ``raw`` (e.g. "+12125550123"), or InvalidPhone.

    Letters are refused although phonenumbers would map them to keypad digits: in a
    contact list they mean a typo, not a vanity number. Reasons end up in logs, so
    they show the number masked.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise InvalidPhone("missing phone number", code="missing_phone")
    if not isinstance(raw, str):
        raise InvalidPhone(f"phone number must be text, not {type(raw).__name__}", code="invalid_phone")
    text = raw.strip()

    def masked() -> str:
        return _masked_digits("".join(ch for ch in text if ch in _ASCII_DIGITS))

    if not _ALLOWED_PHONE_CHARS.fullmatch(text):
        raise InvalidPhone(f"invalid phone number {masked()}: only digits, spaces and + ( ) - . are allowed",
                           code="invalid_phone")
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone(f"invalid phone number {masked()}: cannot be parsed (default region {default_region})",
                           code="invalid_phone") from None
    # Valid in the default region (most numbers of a list) is valid: the same answer as
    # is_valid_number, which tries every region of the country code (+1 has 25).
    if not (phonenumbers.is_valid_number_for_region(number, default_region) or phonenumbers.is_valid_number(number)):
        raise InvalidPhone(f"invalid phone number {masked()}: not a valid number (default region {default_region})",
                           code="invalid_phone")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    with _recently_parsed_lock:
        _recently_parsed[e164] = number
        if len(_recently_parsed) > 4096:
            del _recently_parsed[next(iter(_recently_parsed))]
    return e164


#: The numbers ``normalize_phone`` parsed last, by E.164 form: the fan-out looks up the time
#: zone of each number it has just validated, and parsing costs more than the lookup.
_recently_parsed: dict[str, phonenumbers.PhoneNumber] = {}
_recently_parsed_lock = threading.Lock()


def parsed_phone(e164: str) -> phonenumbers.PhoneNumber:
    """``phonenumbers.parse`` of an E.164 number, without parsing again one just validated."""
    number = _recently_parsed.get(e164)
    return number if number is not None else phonenumbers.parse(e164)
