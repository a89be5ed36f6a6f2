"""The stated range of every setting, and the checks behind it (``settings.py`` uses them).

Each field of ``Settings`` carries a ``Range`` in its metadata: bounds for a number, the
choices, URL schemes or the test for a string, and the short phrase that both the error
message and the README's settings table use. ``check`` holds a value to its range and
raises ``ConfigurationError`` naming the variable and the range; nan and inf are refused
for every float. Nothing here does I/O.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from errors import ConfigurationError


@dataclass(frozen=True)
class Range:
    """What a setting may be. ``phrase`` is the range in words ("1 to 2000")."""

    phrase: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    test: Callable[[str], bool] | None = None
    #: The empty string (unset) is allowed.
    optional: bool = False
    #: The value is not shown in the error (password hashes).
    hidden: bool = False


def number(low: float, high: float, unit: str = "") -> Range:
    return Range(f"{_num(low)} to {_num(high)}{' ' + unit if unit else ''}", low=low, high=high)


def choice(*choices: str) -> Range:
    words = [f"`{c}`" for c in choices]
    return Range(", ".join(words[:-1]) + " or " + words[-1], choices=choices)


def url(*schemes: str, phrase: str = "", optional: bool = False) -> Range:
    return Range(phrase or f"an {' or '.join(schemes)} URL", schemes=schemes, optional=optional)


def text(phrase: str, test: Callable[[str], bool], *, optional: bool = False, hidden: bool = False) -> Range:
    return Range(phrase, test=test, optional=optional, hidden=hidden)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check(name: str, type_name: str, value, rng: Range) -> None:
    """Raise ``ConfigurationError`` unless ``value`` is within ``rng``."""
    phrase = in_words(rng)
    if type_name in ("int", "float"):
        _check_number(name, type_name, value, rng)
        return
    if type_name == "Secret":
        if not isinstance(value, str) and not hasattr(value, "reveal"):
            raise ConfigurationError(f"{name} must be a string")
        return
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, not {type(value).__name__}")
    if value == "" and rng.optional:
        return
    shown = mask_url(value) if rng.schemes else "(not shown)" if rng.hidden else repr(value)
    if rng.choices and value not in rng.choices:
        raise ConfigurationError(f"{name}={shown} must be {phrase}")
    if rng.schemes and not _url_ok(value, rng.schemes):
        raise ConfigurationError(f"{name}={shown} must be {phrase}")
    if rng.test is not None and not rng.test(value):
        raise ConfigurationError(f"{name}={shown} must be {phrase}")


def in_words(rng: Range) -> str:
    """The phrase as a message says it (the README's backticks as quotes)."""
    return rng.phrase.replace("`", "'")


def _check_number(name: str, type_name: str, value, rng: Range) -> None:
    phrase = in_words(rng)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (type_name == "int" and not isinstance(value, int)):
        raise ConfigurationError(f"{name}={value!r} is not {_kind(type_name)}: must be {phrase}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"{name}={value!r} is not a finite number: must be {phrase}")
    if (rng.low is not None and value < rng.low) or (rng.high is not None and value > rng.high):
        raise ConfigurationError(f"{name}={_num(value)} is out of range: must be {phrase}")


def _kind(type_name: str) -> str:
    return "a whole number" if type_name == "int" else "a number"


def parse_number(name: str, raw: str, type_name: str, rng: Range):
    """The int or float written in ``raw``; the error names the variable and its range."""
    try:
        return int(raw) if type_name == "int" else float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not {_kind(type_name)}: must be {in_words(rng)}") from None


def _url_ok(value: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme not in schemes:
        return False
    if parts.scheme in ("http", "https", "redis", "rediss"):
        return bool(parts.hostname)
    return True


# ----------------------------------------------------------------------- string tests


def rate_limit_ok(value: str) -> bool:
    """One limit in ``limits`` notation, of at least 1 per period (a 0 would divide by zero
    in the pacing, and a second limit after ``;`` would be silently ignored)."""
    from limits import parse_many

    try:
        items = parse_many(value)
    except ValueError:
        return False
    return len(items) == 1 and items[0].amount >= 1


RATE_LIMIT = "one limit of at least 1 per period, such as `10/minute` or `20 per 2 seconds`"


def region_ok(value: str) -> bool:
    import phonenumbers

    return value in phonenumbers.SUPPORTED_REGIONS


def zone_ok(value: str) -> bool:
    from quiet import zone

    return zone(value) is not None


def quiet_hours_ok(value: str) -> bool:
    if value.lower() == "off":
        return True
    from quiet import QuietHours

    try:
        QuietHours.parse(value)
    except ValueError:
        return False
    return True


_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SID = re.compile(r"^(AC|MG)[0-9a-fA-F]{32}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def namespace_ok(value: str) -> bool:
    return bool(_NAMESPACE.match(value))


def sid_ok(prefix: str) -> Callable[[str], bool]:
    return lambda value: bool(_SID.match(value)) and value.startswith(prefix)


#: An operator's name in ``DASHBOARD_USERS``.
OPERATOR_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
#: A werkzeug.security hash: ``method$salt$hash`` (scrypt or pbkdf2).
PASSWORD_HASH = re.compile(r"(scrypt|pbkdf2):[A-Za-z0-9:]+\$[^$,\s]+\$[0-9a-f]+")


def dashboard_users(value: str) -> dict[str, str]:
    """``DASHBOARD_USERS`` as {name: hash}; ValueError naming the first bad entry."""
    users: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, _, hashed = entry.partition(":")
        if not OPERATOR_NAME.fullmatch(name) or not PASSWORD_HASH.fullmatch(hashed) or name in users:
            raise ValueError(f"entry {name[:64]!r} is not name:<scrypt or pbkdf2 hash> (or the name is repeated)")
        users[name] = hashed
    return users


def dashboard_users_ok(value: str) -> bool:
    try:
        return bool(dashboard_users(value))
    except ValueError:
        return False


def e164_ok(value: str) -> bool:
    return bool(_E164.match(value))


# ----------------------------------------------------------------------- URLs in messages


@functools.lru_cache(maxsize=64)
def mask_url(value: str) -> str:
    """``value`` with its password (in the user part or a ``password=`` query) as ***, for
    messages: ``redis://:***@host:6379/0``."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return "<a malformed URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:***"
        elif parts.scheme in ("redis", "rediss", "unix"):
            userinfo = "***"  # redis-py reads a lone user part as a credential
        netloc = f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return value  # (urlunsplit would write sqlite:////abs as sqlite://abs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
