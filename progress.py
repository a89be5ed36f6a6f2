"""The arithmetic of a campaign's progress, pure (the caller passes the times): the send
rate measured over a window that fits the campaign's age and speed, the rate the limits
allow, and the time left to finish.

- **The window**: the most recent sends, back to whichever comes first of ``enough``
  sends (a fast campaign: 200 sends at 50/second is the last 4 s), ``max_window_s`` (a slow
  one: 5 minutes), or the campaign's first send (a young one is not averaged over time it
  did not exist, nor over its start-up before the first send). It starts at the oldest
  send it keeps and always ends now, so a campaign that stopped sending sees its rate fall
  instead of keeping the last burst's.
- **The ETA**: the rows that can go now at the measured rate (never above what the limits
  allow; the limits' own rate until a rate is measured), from the end of a hold of
  Twilio's if one holds the campaign's sends now, then each quiet-hours hold joins the line
  at the time its window ends. Holds that would begin later (a zone that enters
  its quiet hours while the campaign runs) are not foreseen.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Sequence

#: Sends that make a measure: the window is cut at the ``ENOUGH_SENDS``-th most recent one.
ENOUGH_SENDS = 200
#: The longest window (a slow campaign's rate is the last 5 minutes).
MAX_WINDOW_S = 300.0
#: A window shorter than this measures nothing yet (the first second of a campaign).
MIN_WINDOW_S = 1.0
#: Fewer sends than this in the window: the limits' rate is used for the ETA instead.
MIN_SENDS = 3


@dataclass(frozen=True)
class Rate:
    """A measured rate: ``sends`` sends over the last ``window_s`` seconds."""

    per_s: float
    window_s: float
    sends: int

    @property
    def per_minute(self) -> float:
        return self.per_s * 60


def measured_rate(
    recent_sent_at: Sequence[dt.datetime], *, now: dt.datetime, started_at: dt.datetime | None,
    enough: int = ENOUGH_SENDS, max_window_s: float = MAX_WINDOW_S,
) -> Rate | None:
    """The send rate over the window described above, from the ``sent_at`` times of the
    campaign's most recent sends (newest first; at least the ``enough`` most recent within
    ``max_window_s``, more are ignored). None while the window is under ``MIN_WINDOW_S``.

    Parameters:
        recent_sent_at: naive UTC times, newest first.
        now: naive UTC, the end of the window.
        started_at: the campaign's start (naive UTC), None if unknown.
        enough: the window is cut at this many sends.
        max_window_s: the longest window.
    """
    floor = now - dt.timedelta(seconds=max_window_s)
    if started_at is not None and started_at > floor:
        floor = started_at
    # A send stamped after ``now`` (written while the report was read, or by a host whose
    # clock is a little ahead) is a send of now: dropping it would shrink the measure.
    times = [min(t, now) for t in recent_sent_at[:enough] if t >= floor]
    if len(times) >= 2:
        # From the oldest send kept (the ``enough``-th most recent, or the first of a young
        # campaign, whose ramp-up before it is not its speed): the sends after it, over the
        # time since it.
        start, sends = times[-1], len(times) - 1
    else:
        start, sends = floor, len(times)
    window_s = (now - start).total_seconds()
    if window_s < MIN_WINDOW_S:
        return None
    return Rate(sends / window_s, window_s, sends)


def limit_rate_per_s(limits: Iterable[tuple[int, float]], *, segments_per_message: float = 1.0) -> float | None:
    """Messages per second the slowest of ``limits`` allows, each ``(amount, period_s)`` in
    segments (the rate limiter charges a message its segments); None without a limit."""
    rates = [amount / period_s for amount, period_s in limits if period_s > 0]
    if not rates:
        return None
    return min(rates) / max(segments_per_message, 1.0)


def rate_for_eta(measured: Rate | None, limit_per_s: float | None) -> float | None:
    """The rate the rest is expected to go at: the measured one (when it counts at least
    ``MIN_SENDS`` sends), never above the limit; else the limit's; else None."""
    if measured is not None and measured.sends >= MIN_SENDS and measured.per_s > 0:
        return min(measured.per_s, limit_per_s) if limit_per_s else measured.per_s
    return limit_per_s


def eta_s(sendable: int, *, rate_per_s: float | None, holds: Iterable[tuple[float, int]] = (),
          not_before_s: float = 0.0) -> float | None:
    """Seconds until the last open row is sent: ``sendable`` rows from ``not_before_s``,
    then each hold ``(seconds until it ends, rows)`` joins at its end; at ``rate_per_s``. 0
    when nothing is open; None without a rate.

    Parameters:
        sendable: open rows that may go once nothing holds the campaign (not in quiet hours).
        rate_per_s: messages per second.
        holds: quiet-hours holds, each (seconds from now until its window ends, rows held).
        not_before_s: seconds until a hold of Twilio's on every one of the campaign's sends
            ends (0: none).
    """
    holds = sorted((max(0.0, start_s), rows) for start_s, rows in holds if rows > 0)
    if sendable <= 0 and not holds:
        return 0.0
    if not rate_per_s or rate_per_s <= 0:
        return None
    finish_s = max(0.0, not_before_s) + max(0, sendable) / rate_per_s
    for start_s, rows in holds:
        finish_s = max(finish_s, start_s) + rows / rate_per_s
    return finish_s
