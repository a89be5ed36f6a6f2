"""A global rate limit for actors, shared by every worker process through Redis.

Raising ``RateLimitExceeded`` from inside an actor (Dramatiq's own limiters) spends the
message's retries and ends in the dead-letter queue once a backlog outlasts them. Here a
throttled message is instead re-enqueued for a moment when it can go and acknowledged: a
deferral, never a retry.

Exactness comes from ``limits``' moving window (one atomic Lua call in Redis). Efficiency
comes from a line of reservations beside it: a throttled message takes the next slot in the
line (slots are spaced ``period / amount`` apart) and sleeps until then, so deferred
messages wake one by one at the rate the limit allows instead of all at once; a message
without a reservation may not jump the line. A message whose slot comes a little early or
late holds its worker thread for a short wait (``hold_ms``) instead of going back to the
broker.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from typing import Callable, Mapping

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage
from limits import RateLimitItem, parse
from limits.storage import RedisStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

DEFERRED_MARK = "_deferred_by_rate_limit"

_RESERVE = """
local tail = tonumber(redis.call('get', KEYS[1]) or '0')
local slot = math.max(tonumber(ARGV[1]), tail + tonumber(ARGV[2]))
redis.call('set', KEYS[1], tostring(slot), 'px', math.ceil((slot - tonumber(ARGV[3])) * 1000) + tonumber(ARGV[4]))
return tostring(slot)
"""


class Reservations:
    """The line of future slots per limit key: in Redis when shared, else in memory."""

    def __init__(self, storage: Storage, prefix: str = "reserve") -> None:
        self.redis = storage.get_connection() if isinstance(storage, RedisStorage) else None
        self.prefix = f"{storage.key_prefix}:{prefix}" if isinstance(storage, RedisStorage) else prefix
        self._script = self.redis.register_script(_RESERVE) if self.redis is not None else None
        self._tails: dict[str, float] = {}
        self._lock = threading.Lock()

    def tail_s(self, key: str) -> float:
        """The last reserved slot (seconds since the epoch), 0 when nobody waits."""
        if self.redis is not None:
            value = self.redis.get(f"{self.prefix}:{key}")
            return float(value) if value else 0.0
        with self._lock:
            return self._tails.get(key, 0.0)

    def reserve(self, key: str, *, earliest_s: float, step_s: float, now_s: float, ttl_ms: int) -> float:
        """Take the next slot at or after ``earliest_s``, ``step_s`` after the line's tail."""
        if self._script is not None:
            return float(self._script(keys=[f"{self.prefix}:{key}"], args=[earliest_s, step_s, now_s, ttl_ms]))
        with self._lock:
            tail = self._tails.get(key, 0.0)
            if tail < now_s - ttl_ms / 1000:
                tail = 0.0
            slot = max(earliest_s, tail + step_s)
            self._tails[key] = slot
            return slot


class _DropDeferralWarnings(logging.Filter):
    """The worker logs every skipped message as a warning; a deferral is routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        deferred = record.args and getattr(record.args[0], DEFERRED_MARK, False)
        return not (record.msg == "Message %s was skipped." and deferred)


class RateLimit(Middleware):
    """Middleware that defers messages of rate-limited actors until the limit allows them.

    Parameters:
      limits(Mapping[str, str]): Named limits in ``limits`` notation, for example
        ``{"sms": "10/minute"}``. An actor opts in with ``rate_limit="sms"``.
      storage(Storage): Where hits and reservations are kept: Redis, so that the limit
        holds across every process (``memory://`` only within one process).
      clock(Callable[[], float]): Seconds since the epoch, the clock ``limits`` uses.
      hold_ms(int): A wait up to this long is slept in the worker thread rather than
        sent back to the broker.

    Actors (or single messages) may also set ``rate_cost``, the units a message uses
    (segments, for SMS; default 1), and a message may carry ``extra_rate_limit``, a
    ``[key, limit]`` pair checked as well, such as a campaign's own slower limit.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, str],
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
        hold_ms: int = 250,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits: dict[str, RateLimitItem] = {name: parse(value) for name, value in limits.items()}
        self.storage = storage if storage is not None else storage_from_string("memory://")
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.reservations = Reservations(self.storage)
        self.clock = clock
        self.hold_ms = hold_ms

    @property
    def actor_options(self):
        return {"rate_limit", "rate_cost"}

    def before_worker_boot(self, broker, worker):
        worker_logger = logging.getLogger("dramatiq.worker.WorkerThread")
        if not any(isinstance(f, _DropDeferralWarnings) for f in worker_logger.filters):
            worker_logger.addFilter(_DropDeferralWarnings())

    def before_process_message(self, broker, message):
        actor = broker.get_actor(message.actor_name)
        checks = self.checks_for(message.options, actor.options)
        if not checks:
            return
        cost = message.options.get("rate_cost") or actor.options.get("rate_cost", 1)
        slot_s = message.options.get("rate_slot_s")
        for key, item in checks:
            if slot_s is None and self.reservations.tail_s(key) > self.clock():
                self.defer(broker, message, self.reserve(key, item, cost, earliest_s=self.clock()))
            delay_s = self.acquire(key, item, cost)
            if delay_s is not None:
                reset_at_s = self.clock() + delay_s
                slot = reset_at_s if slot_s is not None else self.reserve(key, item, cost, earliest_s=reset_at_s)
                self.defer(broker, message, slot)
        message.options.pop("rate_slot_s", None)

    def checks_for(self, message_options, actor_options) -> list[tuple[str, RateLimitItem]]:
        """The (key, limit) pairs a message must pass, the more specific one first."""
        checks = []
        extra = message_options.get("extra_rate_limit")
        if extra:
            checks.append((str(extra[0]), _parse(extra[1])))
        name = message_options.get("rate_limit") or actor_options.get("rate_limit")
        if name:
            checks.append((name, self.limits[name]))
        return checks

    def acquire(self, key: str, item: RateLimitItem, cost: int) -> float | None:
        """Take ``cost`` units now, holding the thread for a short wait; else the seconds
        until the window frees."""
        hold_until = self.clock() + self.hold_ms / 1000
        while True:
            if self.limiter.hit(item, key, cost=cost):
                return None
            reset_at_s, _remaining = self.limiter.get_window_stats(item, key)
            now = self.clock()
            if reset_at_s > hold_until:
                return max(0.001, reset_at_s - now)
            time.sleep(max(0.001, reset_at_s - now))

    def reserve(self, key: str, item: RateLimitItem, cost: int, *, earliest_s: float) -> float:
        step_s = item.get_expiry() * cost / item.amount
        ttl_ms = item.get_expiry() * 1000 + 60_000
        return self.reservations.reserve(key, earliest_s=earliest_s, step_s=step_s, now_s=self.clock(), ttl_ms=ttl_ms)

    def defer(self, broker, message, slot_s: float):
        delay_ms = max(1, math.ceil((slot_s - self.clock()) * 1000))
        deferrals = message.options.get("deferrals", 0) + 1
        self.logger.debug("Deferring message %r by %d ms.", message.message_id, delay_ms)
        broker.enqueue(message.copy(options={"deferrals": deferrals, "rate_slot_s": slot_s}), delay=delay_ms)
        setattr(message, DEFERRED_MARK, True)
        raise SkipMessage(f"rate limited; deferred by {delay_ms} ms")

    def backlog_s(self, name: str) -> float:
        """How far ahead of now the line of reserved slots for ``name`` reaches."""
        return max(0.0, self.reservations.tail_s(name) - self.clock())


@functools.lru_cache(maxsize=256)
def _parse(limit: str) -> RateLimitItem:
    return parse(limit)


def slower(a: str, b: str | None) -> str:
    """The stricter of two limits (the lower rate)."""
    if not b:
        return a
    item_a, item_b = _parse(a), _parse(b)
    return b if item_b.amount / item_b.get_expiry() < item_a.amount / item_a.get_expiry() else a


def pacing(limit: str, *, max_chunk: int = 1000) -> tuple[int, int]:
    """(messages to keep in flight, ms between dispatcher runs) under ``limit``: about two
    windows' worth ahead of the limiter, topped up every half window."""
    item = _parse(limit)
    chunk = max(1, min(item.amount, max_chunk))
    chunk_ms = item.get_expiry() * 1000 * chunk / item.amount
    return 2 * chunk, max(20, int(chunk_ms / 2))
