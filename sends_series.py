"""A campaign's sends per minute, kept as aggregates for the dashboard's chart.

``refresh`` is called by the analytics recompute (``analytics.recompute_analytics``, already
coalesced by the metrics debouncer): it recounts only the minutes from the last one it kept
(minus ``RECOUNT_MINUTES``, for sends recorded late: a result written behind, a reconciled
row) onward, from the partial index on (campaign, sent_at), so each refresh reads the sends
since the previous one, never the campaign's whole message table (the first refresh of a
campaign that ran before this table existed reads its sends once). ``series`` reads at most
``MAX_MINUTES`` kept rows and sums them into at most ``MAX_BARS`` bars, so the chart of a
campaign that ran for weeks costs what one of an hour does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from peewee import EXCLUDED, fn

from models import Message, SendsPerMinute, database, is_postgres

#: Minutes before the last kept one that a refresh counts again.
RECOUNT_MINUTES = 2
#: The chart covers at most the campaign's last day of sends...
MAX_MINUTES = 24 * 60
#: ...in at most this many bars (each the sum of whole minutes).
MAX_BARS = 120


def _minute_of(value) -> dt.datetime:
    if isinstance(value, str):  # SQLite's strftime
        value = dt.datetime.fromisoformat(value)
    return value.replace(second=0, microsecond=0)


def refresh(campaign_id: int) -> int:
    """Recount the campaign's recent minutes (see the module's docstring); returns how many
    minutes were written."""
    last = (SendsPerMinute.select(fn.MAX(SendsPerMinute.minute))
            .where(SendsPerMinute.campaign == campaign_id).scalar())
    bucket = (fn.date_trunc("minute", Message.sent_at) if is_postgres()
              else fn.strftime("%Y-%m-%d %H:%M:00", Message.sent_at))
    condition = (Message.campaign == campaign_id) & Message.sent_at.is_null(False)
    if last is not None:
        condition &= Message.sent_at >= _minute_of(last) - dt.timedelta(minutes=RECOUNT_MINUTES)
    counted = (Message.select(bucket.alias("minute"), fn.COUNT(Message.id)).where(condition)
               .group_by(bucket).tuples())
    rows = [{"campaign": campaign_id, "minute": _minute_of(minute), "sends": n} for minute, n in counted]
    with database.atomic():
        for start in range(0, len(rows), 500):
            (SendsPerMinute.insert_many(rows[start:start + 500])
             .on_conflict(conflict_target=[SendsPerMinute.campaign, SendsPerMinute.minute],
                          update={SendsPerMinute.sends: EXCLUDED.sends})
             .execute())
    return len(rows)


@dataclass(frozen=True)
class Bar:
    start: dt.datetime
    minutes: int
    sends: int

    @property
    def per_minute(self) -> float:
        return self.sends / self.minutes


def series(campaign_id: int, *, max_bars: int = MAX_BARS) -> list[Bar]:
    """The campaign's sends over its last ``MAX_MINUTES`` minutes of sending, oldest first,
    in at most ``max_bars`` bars of equal width (minutes without sends count as 0)."""
    kept = list(SendsPerMinute.select(SendsPerMinute.minute, SendsPerMinute.sends)
                .where(SendsPerMinute.campaign == campaign_id)
                .order_by(SendsPerMinute.minute.desc()).limit(MAX_MINUTES).tuples())
    if not kept:
        return []
    last = _minute_of(kept[0][0])
    first = max(_minute_of(kept[-1][0]), last - dt.timedelta(minutes=MAX_MINUTES - 1))
    span = int((last - first).total_seconds() // 60) + 1
    width = -(-span // max_bars)  # minutes per bar, rounded up
    bars = -(-span // width)
    sums = [0] * bars
    for minute, n in kept:
        offset = int((_minute_of(minute) - first).total_seconds() // 60)
        if offset >= 0:
            sums[offset // width] += n
    return [Bar(first + dt.timedelta(minutes=i * width), width, sums[i]) for i in range(bars)]
