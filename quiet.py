"""Quiet hours in the recipient's local time (the TCPA forbids marketing texts in the US
outside 8:00-21:00 local time). Pure functions: the caller passes the current instant."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezones

from sms import parsed_phone


@dataclass(frozen=True)
class QuietHours:
    """A daily window, ``start`` to ``end`` local time; it may wrap midnight (21:00-08:00)."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> "QuietHours":
        """``"21:00-08:00"``; raises ValueError on anything else."""
        start, end = (dt.time.fromisoformat(part.strip()) for part in text.split("-"))
        if start.tzinfo is not None or end.tzinfo is not None:
            raise ValueError("quiet hours are local times, without a UTC offset")
        if start == end:
            raise ValueError("quiet hours must not start and end at the same time")
        return cls(start, end)

    def contains(self, local: dt.time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def next_allowed_utc(self, now_utc: dt.datetime, zone: ZoneInfo) -> dt.datetime | None:
        """None if ``now_utc`` is outside the window in ``zone``; else the UTC instant
        (naive) at which the window ends there."""
        local = now_utc.replace(tzinfo=dt.timezone.utc).astimezone(zone)
        if not self.contains(local.time()):
            return None
        day = local.date() if local.time() < self.end else local.date() + dt.timedelta(days=1)
        now_aware = now_utc.replace(tzinfo=dt.timezone.utc)
        for candidate in (day, day + dt.timedelta(days=1)):
            for fold in (0, 1):  # an end inside a repeated hour (autumn) has two instants
                ends = dt.datetime.combine(candidate, self.end, tzinfo=zone).replace(fold=fold)
                if ends.astimezone(dt.timezone.utc) > now_aware:
                    return ends.astimezone(dt.timezone.utc).replace(tzinfo=None)
        raise AssertionError("unreachable: the next day's end is always in the future")


    def seconds_until_start(self, now_utc: dt.datetime, zone: ZoneInfo) -> float:
        """Seconds from ``now_utc`` (naive UTC) until the window next starts in ``zone``
        (0 inside it)."""
        if self.next_allowed_utc(now_utc, zone) is not None:
            return 0.0
        now_aware = now_utc.replace(tzinfo=dt.timezone.utc)
        local = now_aware.astimezone(zone)
        for days in (0, 1, 2):
            # A start inside a skipped hour (spring) is read as the instant after the gap.
            start = dt.datetime.combine(local.date() + dt.timedelta(days=days), self.start, tzinfo=zone)
            seconds = (start.astimezone(dt.timezone.utc) - now_aware).total_seconds()
            if seconds > 0:
                return seconds
        raise AssertionError("unreachable: a window starts within two days")


@lru_cache(maxsize=512)
def zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=100_000)
def zone_of_number(phone_e164: str) -> ZoneInfo | None:
    """The number's time zone when its prefix maps to exactly one zone, else None."""
    try:
        zones = phone_timezones.time_zones_for_number(parsed_phone(phone_e164))
    except phonenumbers.NumberParseException:
        return None
    return zone(zones[0]) if len(zones) == 1 else None


def recipient_zone(phone_e164: str | None, *, customer_zone: str | None, campaign_zone: str | None, default_zone: str) -> ZoneInfo:
    """The customer's own zone when known, else the number's when it maps to a single
    zone, else the campaign's, else the default."""
    return (
        zone(customer_zone)
        or (zone_of_number(phone_e164) if phone_e164 else None)
        or zone(campaign_zone)
        or zone(default_zone)
        or ZoneInfo("UTC")
    )
