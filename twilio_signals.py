"""Twilio's signals to slow down or stop, and what the product does about each: the one table.

Twilio tells a sender to slow down or stop in two places: the answer to a create (an HTTP
error with a code) and, for what a carrier decides later, the ``ErrorCode`` of an
``undelivered`` or ``failed`` status callback. A code means the same on both paths, so both
read this table (``smsservice.classify_twilio_error`` for the first, ``signal_actions`` for
the second). Pure: no I/O, the caller passes the current instant.

| code | Twilio's meaning | action |
| --- | --- | --- |
| HTTP 429 / 20429 with ``Retry-After`` | too many requests (the account's concurrency) | every send of every campaign is held for ``Retry-After`` s, at most ``TWILIO_RETRY_AFTER_MAX_S`` |
| 30034 | US A2P 10DLC: message from an unregistered number | every sending campaign of that sender is paused with the reason |
| 30032 | toll-free number not verified | the same |
| 30027 | US A2P 10DLC: T-Mobile daily message limit reached | the sender's traffic is held until the next midnight Pacific (when T-Mobile resets it) |
| 63038 | the account's daily message limit (a rolling 24 h window) | every send is held for 24 h |
| 30007 | message filtered by the carrier | counted; a spike (``FILTERING_STORM_*``) pauses the campaign |
| 30022 | US A2P 10DLC: rate limit (throughput) exceeded | the campaign's rate is halved (at most once a minute), down to 1 a day; it does not recover by itself |
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from limits import parse

#: T-Mobile's daily cap resets at midnight in this zone.
CAP_RESET_ZONE = ZoneInfo("America/Los_Angeles")
#: Twilio counts the account's daily limit over a rolling window this long.
ACCOUNT_WINDOW = dt.timedelta(hours=24)
#: A campaign's rate is lowered at most once in this many seconds (a burst of 30022 reports
#: about messages sent at one rate halves it once, not once per report).
SLOWDOWN_COOLDOWN_S = 60
#: The slowest rate a slow-down goes to (a campaign's limit may not have a window over a day).
SLOWEST_WINDOW_S = 86_400


class Action(str, enum.Enum):
    HOLD_ALL_BRIEFLY = "hold_all_briefly"
    PAUSE_SENDER = "pause_sender"
    HOLD_SENDER_UNTIL_CAP_RESET = "hold_sender_until_cap_reset"
    HOLD_ALL_FOR_A_DAY = "hold_all_for_a_day"
    COUNT_FILTERING = "count_filtering"
    SLOW_CAMPAIGN = "slow_campaign"


@dataclass(frozen=True)
class Signal:
    code: str
    action: Action
    #: What Twilio says, as the operator reads it (the reason of a pause, the detail of an event).
    reason: str


SIGNALS: dict[str, Signal] = {s.code: s for s in (
    Signal("20429", Action.HOLD_ALL_BRIEFLY, "Twilio answered 429 Too Many Requests"),
    Signal("30034", Action.PAUSE_SENDER,
           "Twilio 30034: the sender is not registered for US A2P 10DLC; register it (Twilio console), then resume"),
    Signal("30032", Action.PAUSE_SENDER,
           "Twilio 30032: the toll-free sender is not verified; verify it (Twilio console), then resume"),
    Signal("30027", Action.HOLD_SENDER_UNTIL_CAP_RESET, "Twilio 30027: T-Mobile's daily message limit for the brand is reached"),
    Signal("63038", Action.HOLD_ALL_FOR_A_DAY, "Twilio 63038: the account's daily message limit is reached"),
    Signal("30007", Action.COUNT_FILTERING, "Twilio 30007: message filtered by the carrier"),
    Signal("30022", Action.SLOW_CAMPAIGN, "Twilio 30022: the carrier's rate limit for the 10DLC campaign was exceeded"),
)}

#: The hold groups of the rate limiter (``ratelimit.RateLimit.stop`` with a time to live):
#: one per rule, so that a short hold never shortens a long one.
HOLD_ALL_BRIEFLY_GROUP = "hold:all:retry-after"
HOLD_ALL_DAY_GROUP = "hold:all:daily-limit"


def hold_sender_group(sender: str | None) -> str:
    return f"hold:sender:{sender or 'default'}:daily-cap"


def holds_of(sender: str | None) -> list[tuple[str, Signal, bool]]:
    """Every hold a message from ``sender`` must not be sent through: (group, the signal
    that sets it, whether it holds every send rather than the sender's)."""
    return [(HOLD_ALL_BRIEFLY_GROUP, SIGNALS["20429"], True), (HOLD_ALL_DAY_GROUP, SIGNALS["63038"], True),
            (hold_sender_group(sender), SIGNALS["30027"], False)]


def hold_groups(sender: str | None) -> list[str]:
    """Every hold a message from ``sender`` must not be sent through."""
    return [group for group, _signal, _everyone in holds_of(sender)]


def signal_for(code: str | int | None, http_status: int | None = None) -> Signal | None:
    """The table's row for a Twilio error code (an HTTP 429 without a code is 20429)."""
    if code is not None and str(code) in SIGNALS:
        return SIGNALS[str(code)]
    if http_status == 429:
        return SIGNALS["20429"]
    return None


def hold_until(action: Action, now_utc: dt.datetime) -> dt.datetime:
    """When a hold started at ``now_utc`` (naive UTC) ends (naive UTC)."""
    if action is Action.HOLD_SENDER_UNTIL_CAP_RESET:
        local = now_utc.replace(tzinfo=dt.timezone.utc).astimezone(CAP_RESET_ZONE)
        midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(0), tzinfo=CAP_RESET_ZONE)
        return midnight.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if action is Action.HOLD_ALL_FOR_A_DAY:
        return now_utc + ACCOUNT_WINDOW
    raise ValueError(f"{action} is not a hold until a time")


def retry_after_s(value: str | None, now_utc: dt.datetime) -> float | None:
    """A ``Retry-After`` header in seconds: a number of seconds or an HTTP date; None if
    absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - now_utc.replace(tzinfo=dt.timezone.utc)).total_seconds())


def brief_hold_s(retry_after: float | None, *, max_s: float) -> float | None:
    """How long a 429 holds everyone: its ``Retry-After``, at most ``max_s``; None without one."""
    if retry_after is None or retry_after <= 0:
        return None
    return min(retry_after, max_s)


def halved(limit: str) -> str | None:
    """Half the rate of ``limit`` (``limits`` notation), in the same notation; None when it
    is already 1 per ``SLOWEST_WINDOW_S`` or slower."""
    item = parse(limit)
    amount, period_s = item.amount, item.get_expiry()
    if amount >= 2:
        return f"{amount // 2} per {period_s} seconds"
    if period_s * 2 > SLOWEST_WINDOW_S:
        return None
    return f"1 per {period_s * 2} seconds"
