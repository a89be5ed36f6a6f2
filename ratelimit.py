"""A global rate limit for actors, shared by every worker process through Redis.

Raising ``RateLimitExceeded`` from inside an actor (Dramatiq's own limiters) spends the
message's retries and ends in the dead-letter queue once a backlog outlasts them. Here a
throttled message is instead re-enqueued for the moment a slot frees and acknowledged: a
deferral, never a retry.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable, Mapping

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage
from limits import RateLimitItem, parse
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter


DEFERRED_MARK = "_deferred_by_rate_limit"


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
      storage(Storage): Where hits are counted: Redis, so that the limit holds across
        every process (``memory://`` only within one process).
      clock(Callable[[], float]): Seconds since the epoch, the clock ``limits`` uses.
      jitter(float): Up to this fraction of one slot's spacing is added to each delay,
        so that deferred messages do not all wake at the same instant.

    Actors may also set ``rate_cost`` (default 1), the number of units a message uses,
    and a message's options override both.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, str],
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
        jitter: float = 1.0,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits: dict[str, RateLimitItem] = {name: parse(value) for name, value in limits.items()}
        self.storage = storage if storage is not None else storage_from_string("memory://")
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.clock = clock
        self.jitter = jitter

    @property
    def actor_options(self):
        return {"rate_limit", "rate_cost"}

    def before_worker_boot(self, broker, worker):
        worker_logger = logging.getLogger("dramatiq.worker.WorkerThread")
        if not any(isinstance(f, _DropDeferralWarnings) for f in worker_logger.filters):
            worker_logger.addFilter(_DropDeferralWarnings())

    def before_process_message(self, broker, message):
        actor = broker.get_actor(message.actor_name)
        name = message.options.get("rate_limit") or actor.options.get("rate_limit")
        if not name:
            return
        item = self.limits[name]
        cost = message.options.get("rate_cost") or actor.options.get("rate_cost", 1)
        if self.limiter.hit(item, name, cost=cost):
            return

        delay_ms = self.delay_until_free_ms(item, name)
        deferrals = message.options.get("deferrals", 0) + 1
        self.logger.debug("Deferring message %r by %d ms (limit %r).", message.message_id, delay_ms, name)
        broker.enqueue(message.copy(options={"deferrals": deferrals}), delay=delay_ms)
        setattr(message, DEFERRED_MARK, True)
        raise SkipMessage(f"rate limit {name!r} reached; deferred by {delay_ms} ms")

    def delay_until_free_ms(self, item: RateLimitItem, name: str) -> int:
        reset_at_s, _remaining = self.limiter.get_window_stats(item, name)
        spacing_s = item.get_expiry() / item.amount
        wait_s = max(0.0, reset_at_s - self.clock()) + random.uniform(0, self.jitter * spacing_s)
        return max(1, math.ceil(wait_s * 1000))
