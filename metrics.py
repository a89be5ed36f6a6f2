"""Coalescing of analytics updates: many sends, a bounded number of aggregations.

Each finished send asks for an update; only the first ask in a window enqueues one, and
the update releases the window *before* it reads, so a send that lands during the
aggregation schedules the next one and the last send is always counted.
"""

from __future__ import annotations

import threading
import time


class MetricsDebouncer:
    """One pending analytics update per campaign at a time (Redis when shared, else memory).

    While a campaign's key exists, its update has not read yet, and it reads no earlier
    than ``delay_ms`` after the key was set: a send committed before then is counted by it
    and need not ask. Each process remembers until when that holds (``_covered_until``),
    from its own claims and from the key's TTL that the rate-limit gate reads in the same
    round trip as the slot (``saw_ttl``), so most sends ask Redis nothing.
    """

    #: Slack for the clocks of the host that enqueued the update and the one running it.
    SKEW_MS = 50

    def __init__(self, *, redis=None, delay_ms: int = 1000, prefix: str = "campaign-sms:metrics-pending") -> None:
        self.redis = redis
        self.delay_ms = delay_ms
        self.prefix = prefix
        self.ttl_ms = delay_ms * 2 + 5_000  # outlives a lost update message only briefly
        self._margin_s = min(self.SKEW_MS, delay_ms / 4) / 1000
        self._local: dict[int, float] = {}
        self._covered_until: dict[int, float] = {}
        self._lock = threading.Lock()

    def key(self, campaign_id: int) -> str | None:
        """The Redis key of the campaign's pending update (None without Redis)."""
        return f"{self.prefix}:{campaign_id}" if self.redis is not None else None

    def saw_ttl(self, campaign_id: int, ttl_ms: int | None, *, seen_at: float) -> None:
        """Note the key's PTTL as read at or after ``seen_at`` (``time.monotonic()``)."""
        if ttl_ms is None or ttl_ms < 0:
            return
        reads_in_s = (ttl_ms - (self.ttl_ms - self.delay_ms)) / 1000
        self._cover(campaign_id, seen_at + reads_in_s)

    def claim(self, campaign_id: int) -> bool:
        """True if the caller must enqueue the update (nobody else has in this window)."""
        if self.redis is not None:
            now = time.monotonic()
            if now < self._covered_until.get(campaign_id, 0.0):
                return False
            claimed = bool(self.redis.set(self.key(campaign_id), "1", nx=True, px=self.ttl_ms))
            if claimed:
                self._cover(campaign_id, now + self.delay_ms / 1000)
            return claimed
        now = time.monotonic()
        with self._lock:
            if self._local.get(campaign_id, 0) > now:
                return False
            self._local[campaign_id] = now + self.ttl_ms / 1000
            return True

    def release(self, campaign_id: int) -> None:
        if self.redis is not None:
            self.redis.delete(self.key(campaign_id))
            return
        with self._lock:
            self._local.pop(campaign_id, None)

    def _cover(self, campaign_id: int, reads_at: float) -> None:
        until = reads_at - self._margin_s
        if until > self._covered_until.get(campaign_id, 0.0):
            self._covered_until[campaign_id] = until
