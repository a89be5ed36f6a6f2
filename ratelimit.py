"""A global rate limit for actors, shared by every worker process through Redis.

Raising ``RateLimitExceeded`` from inside an actor (Dramatiq's own limiters) spends the
message's retries and ends in the dead-letter queue once a backlog outlasts them. Here a
throttled message is re-enqueued for a moment when it can go and acknowledged: a
deferral, never a retry.

- **Exact where it matters**: the slot is taken by the actor immediately before the HTTP
  call (``Gate.acquire``), not when the message is picked up, so the database work in
  between cannot bunch sends up. The moving window is enforced over ``period + margin_ms``
  so the little jitter left between the slot and Twilio's receipt cannot push two windows'
  sends into one. Check and count are one Lua call, on Redis's own clock.
- **No thundering herd**: a throttled message takes the next slot in a line of reservations
  spaced ``period / amount`` apart and sleeps until then, so deferred messages wake one by
  one at the rate the limit allows; a message without a reservation may not jump the line.
  A wait shorter than ``hold_ms`` is slept in the worker thread instead.
- **Segments, not messages**: ``acquire(cost)`` charges what the message costs.

Limits are written in ``limits`` notation (``10/minute``, ``20 per 2 seconds``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import random
import threading
import time
from collections import deque
from typing import Callable, Mapping

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, SkipMessage
from limits import RateLimitItem, parse

from batching import Combiner

DEFERRED_MARK = "_deferred_by_rate_limit"

# Moving windows, all or nothing, for a batch of requests in arrival order: each window key
# is a list of entry times (ms), newest first, trimmed to its limit. KEYS: the stop keys, the
# windows, the epoch key, then the watched key if any. ARGV: the number of stop keys, whether
# a key is watched, the number of windows, (limit, window_ms) per window, then each cost.
# The epoch key holds the time this Redis first served the limiter: a Redis that restarted
# empty has none, and then grants nothing until one window has passed, because the entries
# it lost might have filled it. (A replica promoted after missing the last writes still has
# the epoch key: the entries it missed are not made up for.)
# Returns, per request, -1 if a stop key exists, 0 when its cost was taken from every window,
# else the ms until the last blocking entry leaves (a request behind a blocked one is not
# served before it); then the watched key's PTTL.
_ACQUIRE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stops, watched, windows = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = -2
if watched == 1 then ttl = redis.call('pttl', KEYS[#KEYS]) end
local first_cost = 4 + 2 * windows
local results = {}
local stopped = false
for i = 1, stops do
  if redis.call('exists', KEYS[i]) == 1 then stopped = true end
end
local epoch = tonumber(redis.call('get', KEYS[stops + windows + 1]) or '-1')
if epoch < 0 then
  epoch = now
  redis.call('set', KEYS[stops + windows + 1], now)
end
local blocked = 0
for r = first_cost, #ARGV do
  local cost = tonumber(ARGV[r])
  local wait = blocked
  if stopped then
    wait = -1
  elseif blocked == 0 then
    for w = 1, windows do
      local limit, window_ms = tonumber(ARGV[2 * w + 2]), tonumber(ARGV[2 * w + 3])
      if now < epoch + window_ms then
        wait = math.max(wait, epoch + window_ms - now)
      end
      local entry = redis.call('lindex', KEYS[stops + w], limit - cost)
      if entry and tonumber(entry) > now - window_ms then
        wait = math.max(wait, tonumber(entry) + window_ms - now)
      end
    end
    if wait > 0 then
      blocked = wait
    else
      for w = 1, windows do
        local key = KEYS[stops + w]
        local limit, window_ms = tonumber(ARGV[2 * w + 2]), tonumber(ARGV[2 * w + 3])
        for j = 1, cost do redis.call('lpush', key, now) end
        redis.call('ltrim', key, 0, limit - 1)
        redis.call('pexpire', key, window_ms)
      end
    end
  end
  results[#results + 1] = wait
end
results[#results + 1] = ttl
return results
"""

# The line of reservations: returns the ms from now to the slot taken, at least
# ARGV[1] ms away and ARGV[2] ms after the previous one.
_RESERVE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tail = tonumber(redis.call('get', KEYS[1]) or '0')
local slot = math.max(now + tonumber(ARGV[1]), tail + tonumber(ARGV[2]))
redis.call('set', KEYS[1], slot, 'px', slot - now + tonumber(ARGV[3]))
return slot - now
"""

# How far ahead of now the line reaches, in ms (0 when nobody waits).
_BACKLOG = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tail = tonumber(redis.call('get', KEYS[1]) or '0')
return math.max(0, tail - now)
"""


class Stopped(Exception):
    """The message's campaign was paused or cancelled: it must not be sent now."""

    #: Not expected back: a resume dispatches the row again.
    queued_at = None


class Throttled(Exception):
    """No slot within the hold time: the message must wait ``delay_ms``."""

    def __init__(self, delay_ms: int, *, reserved: bool) -> None:
        super().__init__(f"rate limited for {delay_ms} ms")
        self.delay_ms = delay_ms
        self.reserved = reserved


class RedisWindows:
    """Moving windows and reservation lines in Redis, shared by every process.

    After Redis comes back without the limiter's keys (a restart without persistence, a
    flush) nothing is granted until one window has passed, since the entries it lost could
    have filled the window: the ``epoch`` key records when this Redis first served the
    limiter. A new Redis waits one window too, and so does a campaign's own limit (a
    ``/day`` limit waits a day). A replica promoted after missing the last writes keeps the
    epoch key, so the entries it missed are not made up for: that bound is not kept.

    Parameters:
      client: A redis-py client.
      prefix(str): The prefix of every key.
    """

    def __init__(self, client, *, prefix: str) -> None:
        self.prefix = prefix
        self.epoch_key = f"{prefix}:epoch"
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._reserve = client.register_script(_RESERVE)
        self._backlog = client.register_script(_BACKLOG)

    def acquire(
        self, windows: list[tuple[str, int, int]], cost: int, stops: tuple[str, ...] = (), *, watch: str | None = None,
    ) -> tuple[int, int | None]:
        """Take ``cost`` from every (key, limit, window_ms) or none. Returns 0, the ms to
        wait, or -1 when one of the ``stops`` is set; and the PTTL of the ``watch`` key
        (a full key name, read in the same round trip), or None when none is watched."""
        waits, ttl_ms = self.acquire_many(windows, [cost], stops, watch=watch)
        return waits[0], ttl_ms

    def acquire_many(
        self, windows: list[tuple[str, int, int]], costs: list[int], stops: tuple[str, ...] = (), *, watch: str | None = None,
    ) -> tuple[list[int], int | None]:
        """``acquire`` for several requests in one round trip, served in order."""
        args = [len(stops), 1 if watch else 0, len(windows)]
        for _key, limit, window_ms in windows:
            args += [limit, window_ms]
        args += costs
        keys = [f"{self.prefix}:stop:{key}" for key in stops] + [f"{self.prefix}:window:{key}" for key, _l, _w in windows]
        keys.append(self.epoch_key)
        if watch:
            keys.append(watch)
        *waits, ttl_ms = self._acquire(keys=keys, args=args)
        return [int(wait) for wait in waits], int(ttl_ms) if watch else None

    def set_stop(self, key: str, stopped: bool) -> None:
        if stopped:
            self._client.set(f"{self.prefix}:stop:{key}", 1, ex=30 * 86400)
        else:
            self._client.delete(f"{self.prefix}:stop:{key}")

    def hold(self, key: str, ttl_ms: int) -> bool:
        """A stop that lifts itself after ``ttl_ms``; True if ``key`` was not held before."""
        return self._client.set(f"{self.prefix}:stop:{key}", 1, px=max(1, int(ttl_ms)), get=True) is None

    def held_ms(self, keys: list[str]) -> int:
        """The longest time left of the holds ``keys`` (0: none is held)."""
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(f"{self.prefix}:stop:{key}")
        return max([int(ttl) for ttl in pipe.execute()] + [0])

    def reserve(self, key: str, earliest_ms: int, step_ms: int, ttl_ms: int) -> int:
        return int(self._reserve(keys=[f"{self.prefix}:line:{key}"], args=[earliest_ms, step_ms, ttl_ms]))

    def backlog_ms(self, key: str) -> int:
        return int(self._backlog(keys=[f"{self.prefix}:line:{key}"]))


class MemoryWindows:
    """The same in one process, for tests and a Redis-less demo."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: dict[str, deque] = {}
        self._tails: dict[str, int] = {}
        self._stops: set[str] = set()
        self._holds: dict[str, int] = {}  # key -> when its hold ends (ms)
        self._lock = threading.Lock()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def set_stop(self, key: str, stopped: bool) -> None:
        with self._lock:
            (self._stops.add if stopped else self._stops.discard)(key)

    def hold(self, key: str, ttl_ms: int) -> bool:
        with self._lock:
            now = self._now_ms()
            fresh = self._holds.get(key, 0) <= now
            self._holds[key] = now + max(1, int(ttl_ms))
            return fresh

    def held_ms(self, keys: list[str]) -> int:
        with self._lock:
            now = self._now_ms()
            return max([self._holds.get(key, 0) - now for key in keys] + [0])

    def _stopped(self, stops: tuple[str, ...]) -> bool:
        now = self._now_ms()
        return any(key in self._stops or self._holds.get(key, 0) > now for key in stops)

    def acquire(
        self, windows: list[tuple[str, int, int]], cost: int, stops: tuple[str, ...] = (), *, watch: str | None = None,
    ) -> tuple[int, int | None]:
        """As ``RedisWindows.acquire``; nothing is shared to watch, so the TTL is None."""
        waits, _ttl = self.acquire_many(windows, [cost], stops, watch=watch)
        return waits[0], None

    def acquire_many(
        self, windows: list[tuple[str, int, int]], costs: list[int], stops: tuple[str, ...] = (), *, watch: str | None = None,
    ) -> tuple[list[int], None]:
        with self._lock:
            if self._stopped(stops):
                return [-1] * len(costs), None
            now = self._now_ms()
            waits, blocked = [], 0
            for cost in costs:
                wait = blocked
                if not blocked:
                    for key, limit, window_ms in windows:
                        entries = self._entries.setdefault(key, deque(maxlen=limit))
                        if len(entries) > limit - cost and entries[limit - cost] > now - window_ms:
                            wait = max(wait, entries[limit - cost] + window_ms - now)
                    if wait:
                        blocked = wait
                    else:
                        for key, _limit, _window_ms in windows:
                            self._entries[key].extendleft([now] * cost)
                waits.append(wait)
            return waits, None

    def reserve(self, key: str, earliest_ms: int, step_ms: int, ttl_ms: int) -> int:
        with self._lock:
            now = self._now_ms()
            slot = max(now + earliest_ms, self._tails.get(key, 0) + step_ms)
            self._tails[key] = slot
            return slot - now

    def backlog_ms(self, key: str) -> int:
        with self._lock:
            return max(0, self._tails.get(key, 0) - self._now_ms())


class _DropDeferralWarnings(logging.Filter):
    """The worker logs every skipped message as a warning; a deferral is routine."""

    def filter(self, record: logging.LogRecord) -> bool:
        deferred = record.args and getattr(record.args[0], DEFERRED_MARK, False)
        return not (record.msg == "Message %s was skipped." and deferred)


_current_gate: contextvars.ContextVar["Gate | None"] = contextvars.ContextVar("rate_limit_gate", default=None)


class RateLimit(Middleware):
    """Middleware that paces messages of rate-limited actors and defers the excess.

    Parameters:
      limits(Mapping[str, str]): Named limits, for example ``{"sms": "10/minute"}``. An
        actor opts in with the actor option ``rate_limit="sms"``.
      windows: ``RedisWindows`` so the limit holds across processes, or ``MemoryWindows``.
      margin_ms(int): Added to every window, to absorb the jitter between taking a slot
        and the provider receiving the request.
      hold_ms(int): A wait up to this long is slept in the worker thread rather than
        sent back to the broker.
      lead_ms(int): A message deferred to a reserved slot is woken this much early (less
        than ``hold_ms``) and then waits in the thread, so that a late wake-up by the
        broker's delay queue does not leave its slot unused.

    A message may also carry ``extra_rate_limit``, a ``[key, limit]`` pair checked first,
    such as a campaign's own slower limit, and ``stop_group``: while that group is stopped
    (``RateLimit.stop``) its messages get no slot and ``acquire`` raises ``Stopped``; the
    same for each of its ``hold_groups`` while held (``RateLimit.hold``, a stop that lifts
    itself). The actor takes its slot with
    ``RateLimit.current_gate().acquire(cost)`` right before the rate-limited call; when it
    raises ``Throttled``, the actor calls ``gate.defer(exc)``.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, str],
        windows: RedisWindows | MemoryWindows | None = None,
        margin_ms: int = 50,
        hold_ms: int = 500,
        lead_ms: int = 300,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits: dict[str, RateLimitItem] = {name: parse(value) for name, value in limits.items()}
        self.windows = windows if windows is not None else MemoryWindows()
        self.margin_ms = margin_ms
        self.hold_ms = hold_ms
        self.lead_ms = min(lead_ms, hold_ms)
        self.sleep = sleep
        self._line_seen_until = 0.0
        self._combiners: dict[tuple, Combiner] = {}

    @property
    def actor_options(self):
        return {"rate_limit"}

    @staticmethod
    def current_gate() -> "Gate | None":
        """The gate of the message this thread is processing, if its actor is limited."""
        return _current_gate.get()

    def before_worker_boot(self, broker, worker):
        worker_logger = logging.getLogger("dramatiq.worker.WorkerThread")
        if not any(isinstance(f, _DropDeferralWarnings) for f in worker_logger.filters):
            worker_logger.addFilter(_DropDeferralWarnings())

    def before_process_message(self, broker, message):
        actor = broker.get_actor(message.actor_name)
        checks = self.checks_for(message.options, actor.options)
        if not checks:
            _current_gate.set(None)
            return
        gate = Gate(self, broker, message, checks)
        _current_gate.set(gate)
        # The line is only looked at while this process has recently met a full window:
        # a limit that is never reached costs no extra round trip.
        if not gate.reserved and time.monotonic() < self._line_seen_until and self.windows.backlog_ms(gate.line[0]) > 0:
            gate.defer(Throttled(self.reserve(*gate.line, 1, earliest_ms=0), reserved=True))

    def saw_full_window(self, item: RateLimitItem) -> None:
        self._line_seen_until = time.monotonic() + 2 * self.window_ms(item) / 1000

    def after_process_message(self, broker, message, *, result=None, exception=None):
        _current_gate.set(None)

    def after_skip_message(self, broker, message):
        _current_gate.set(None)

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

    def take(self, windows: list[tuple[str, int, int]], cost: int, stops: tuple[str, ...], watch: str | None):
        """``windows.acquire`` for one thread; threads asking for the same limits at the
        same moment share one round trip (served in the order they asked)."""
        key = (tuple(windows), stops, watch)
        combiner = self._combiners.get(key)
        if combiner is None:
            if len(self._combiners) >= 1000:
                self._combiners.clear()
            combiner = self._combiners.setdefault(key, Combiner(functools.partial(self.take_many, windows, stops, watch)))
        return combiner.submit(cost)

    def take_many(self, windows, stops, watch, costs: list[int]) -> list[tuple[int, int | None]]:
        """``windows.acquire`` for a batch of costs, in one round trip, served in order."""
        waits, watched_ttl_ms = self.windows.acquire_many(windows, costs, stops, watch=watch)
        return [(wait, watched_ttl_ms) for wait in waits]

    def window_ms(self, item: RateLimitItem) -> int:
        return item.get_expiry() * 1000 + self.margin_ms

    def reserve(self, key: str, item: RateLimitItem, cost: int, *, earliest_ms: int) -> int:
        step_ms = math.ceil(self.window_ms(item) * cost / item.amount)
        return self.windows.reserve(key, earliest_ms, step_ms, self.window_ms(item) + 60_000)

    def stop(self, group: str, stopped: bool = True) -> None:
        """Refuse (or allow again) slots to messages whose ``stop_group`` option is
        ``group``: a pause takes effect at the very last step before sending."""
        self.windows.set_stop(group, stopped)

    def hold(self, group: str, ttl_ms: int) -> bool:
        """``stop`` for ``ttl_ms`` only, for the messages that list ``group`` in their
        ``hold_groups`` option (Twilio's signals, ``signal_actions``); True if it was not held."""
        return self.windows.hold(group, ttl_ms)

    def held_ms(self, groups: list[str]) -> int:
        """The longest time left of the holds of ``groups`` (0: none)."""
        return self.windows.held_ms(groups)


class Gate:
    """One message's passage through its limits.

    All of its limits are taken together or not at all, and it waits in the line of the
    slowest one, whose spacing is the one that binds.
    """

    def __init__(self, middleware: RateLimit, broker, message, checks) -> None:
        self.middleware = middleware
        self.broker = broker
        self.message = message
        self.checks = checks
        self.line = min(checks, key=lambda check: check[1].amount / check[1].get_expiry())
        self.reserved = bool(message.options.get("rate_reserved"))
        group = message.options.get("stop_group")
        self.stop_key = str(group) if group else None
        self.windows = [(key, item.amount, middleware.window_ms(item)) for key, item in checks]
        holds = tuple(str(hold) for hold in message.options.get("hold_groups") or ())
        self.stops = ((self.stop_key,) if self.stop_key else ()) + holds

    @property
    def group(self) -> tuple:
        """Gates with equal groups take their slots from the same windows and stop key."""
        return (tuple(self.windows), self.stops)

    def take_many(self, costs: list[int], *, watch: str | None = None) -> list[tuple[int, int | None] | None]:
        """One try at the slots of several messages of this gate's group, in order, in one
        round trip: (wait_ms, watched PTTL) for each, to pass to its ``acquire(first=)``;
        None for a cost no limit could ever grant (its ``acquire`` says so)."""
        fits = [all(cost <= item.amount for _key, item in self.checks) for cost in costs]
        fitting = [cost for cost, ok in zip(costs, fits) if ok]
        tries = iter(self.middleware.take_many(self.windows, self.stops, watch, fitting) if fitting else ())
        return [next(tries) if ok else None for ok in fits]

    def acquire(self, cost: int = 1, *, watch: str | None = None, first: tuple[int, int | None] | None = None) -> int | None:
        """Take ``cost`` units of every limit now, or within ``hold_ms``; else Throttled.

        Returns the PTTL (ms) of the Redis key ``watch`` as the slot was taken, read in the
        same round trip (None without one, or without Redis): a caller that would otherwise
        ask Redis about that key right after gets the answer for free. ``first`` is the
        outcome of a first try already made by ``take_many``.
        """
        mw = self.middleware
        for _key, item in self.checks:
            if cost > item.amount:
                raise ValueError(f"a cost of {cost} can never fit a limit of {item.amount}")
        hold_until = time.monotonic() + mw.hold_ms / 1000
        while True:
            if first is not None:
                (wait_ms, watched_ttl_ms), first = first, None
            else:
                wait_ms, watched_ttl_ms = mw.take(self.windows, cost, self.stops, watch)
            if wait_ms < 0:
                raise Stopped(self.stop_key)
            if wait_ms == 0:
                break
            mw.saw_full_window(self.line[1])
            if time.monotonic() + wait_ms / 1000 > hold_until:
                if self.reserved:
                    # Keep its place, but do not wake with every other early bird at once.
                    step_ms = mw.window_ms(self.line[1]) / self.line[1].amount
                    raise Throttled(wait_ms + int(random.uniform(0, step_ms)), reserved=True)
                raise Throttled(mw.reserve(*self.line, cost, earliest_ms=wait_ms), reserved=True)
            mw.sleep(wait_ms / 1000)
        self.message.options.pop("rate_reserved", None)
        return watched_ttl_ms

    def defer(self, throttled: Throttled):
        """Re-enqueue the message for its slot and skip it (acknowledged, not retried)."""
        message = self.message
        deferrals = message.options.get("deferrals", 0) + 1
        self.middleware.logger.debug("Deferring message %r by %d ms.", message.message_id, throttled.delay_ms)
        copy = message.copy(options={"deferrals": deferrals, "rate_reserved": throttled.reserved})
        self.broker.enqueue(copy, delay=max(1, throttled.delay_ms - self.middleware.lead_ms))
        setattr(message, DEFERRED_MARK, True)
        raise SkipMessage(f"rate limited; deferred by {throttled.delay_ms} ms")


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
    """(messages to keep in flight, ms between dispatcher runs) under ``limit``: three
    windows' worth ahead of the limiter, topped up every half window."""
    item = _parse(limit)
    chunk = max(1, min(item.amount, max_chunk))
    chunk_ms = item.get_expiry() * 1000 * chunk / item.amount
    return 3 * chunk, max(20, int(chunk_ms / 2))
