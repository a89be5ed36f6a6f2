"""Coalescing of analytics updates: many sends, a bounded number of aggregations.

Each finished send asks for an update; only the first ask in a window enqueues one, and
the update releases the window *before* it reads, so a send that lands during the
aggregation schedules the next one and the last send is always counted.
"""

from __future__ import annotations

import threading
import time


class MetricsDebouncer:
    """One pending analytics update per campaign at a time (Redis when shared, else memory)."""

    def __init__(self, *, redis=None, delay_ms: int = 1000, prefix: str = "campaign-sms:metrics-pending") -> None:
        self.redis = redis
        self.delay_ms = delay_ms
        self.prefix = prefix
        self._local: dict[int, float] = {}
        self._covered_until: dict[int, float] = {}
        self._lock = threading.Lock()

    def claim(self, campaign_id: int) -> bool:
        """True if the caller must enqueue the update (nobody else has in this window).

        For half a window after this process enqueued an update, that update is known to
        run later than anything committed now, so asking Redis again is skipped.
        """
        ttl_ms = self.delay_ms * 2 + 5_000  # outlives a lost update message only briefly
        if self.redis is not None:
            now = time.monotonic()
            if now < self._covered_until.get(campaign_id, 0.0):
                return False
            claimed = bool(self.redis.set(f"{self.prefix}:{campaign_id}", "1", nx=True, px=ttl_ms))
            if claimed:
                self._covered_until[campaign_id] = now + self.delay_ms / 2000
            return claimed
        now = time.monotonic()
        with self._lock:
            if self._local.get(campaign_id, 0) > now:
                return False
            self._local[campaign_id] = now + ttl_ms / 1000
            return True

    def release(self, campaign_id: int) -> None:
        if self.redis is not None:
            self.redis.delete(f"{self.prefix}:{campaign_id}")
            return
        with self._lock:
            self._local.pop(campaign_id, None)
