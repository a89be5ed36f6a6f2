"""Stop groups: a paused or cancelled campaign's messages get no rate-limit slot, at the
very last step before sending (``ratelimit.RateLimit.stop``)."""

from __future__ import annotations

import dramatiq

from ratelimit import RateLimit


def _rate_limit() -> RateLimit | None:
    return next((m for m in dramatiq.get_broker().middleware if isinstance(m, RateLimit)), None)


def stop_group(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def hold(group: str, ttl_ms: int) -> bool:
    """Refuse rate-limit slots to the messages holding ``group`` for ``ttl_ms``; True if it
    was not held yet (False without a limiter)."""
    limiter = _rate_limit()
    return limiter.hold(group, ttl_ms) if limiter is not None else False


def held_ms(groups: list[str]) -> int:
    """The longest time left of the holds of ``groups`` (0: none, or no limiter)."""
    limiter = _rate_limit()
    return limiter.held_ms(groups) if limiter is not None else 0


def stop_campaign(campaign_id: int | None, stopped: bool = True) -> None:
    """Refuse rate-limit slots to the campaign's messages (or allow them again)."""
    limiter = _rate_limit()
    if campaign_id is not None and limiter is not None:
        limiter.stop(stop_group(campaign_id), stopped)
