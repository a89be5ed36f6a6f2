"""Where the rate limiter's moving windows live: in Redis (shared by every process, one Lua
call per try, on Redis's own clock) or in memory (tests, a Redis-less demo).

A window holds one entry per unit taken, scored with the latest time its request can
reach the provider (the receiver, where the limit must hold): the slot's time plus
``margin_ms`` plus ``in_flight_ms`` while the request's answer has not been reported, then,
once it has, the time the report gives plus ``margin_ms``: the answer's (the provider
cannot have counted a request after answering it), or that less the fastest answer the
process has timed (``ratelimit``'s fastest-answer bound). A unit is free again once its
entry's time is a window old. A request can only reach the provider after its slot was
taken, so no window of the provider's own holds more than the limit as long as every
entry's time is a true bound (``RateLimit`` explains the ways it sets them).

Answers are reported as (token, cost, age_ms): the entry of the request that took its
units under ``token`` was answered ``age_ms`` before the call that carries the report,
which Redis turns into its own time (the call started after the answer, so
``now - age_ms`` is not earlier than the answer on Redis's clock).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Sequence

Window = tuple[str, int, int]  # (key, limit, window_ms)
Answer = tuple[str, int, int]  # (token, cost, age_ms)

# KEYS: the stop keys, the windows, the epoch key, the windows' legacy lists (an older
# version's, read while they last, so an upgrade mid-window keeps the bound), then the
# watched key if any.
# ARGV: stops, watched (0/1), windows, margin_ms, in_flight_ms, answers, then (limit,
# window_ms) per window, (token, cost, age_ms) per answer, (token, cost) per request.
# The epoch key holds the time this Redis first served the limiter: a Redis that restarted
# empty has none, and then grants nothing until one window (and the bound of a request
# still in flight) has passed, because the entries it lost might have filled it. (A replica
# promoted after missing the last writes still has the epoch key: the entries it missed
# are not made up for.) Returns, per request, -1 if a stop key exists, 0 when its cost was
# taken from every window, else the ms until the blocking entry leaves, or for an entry
# still in flight until it would leave were it answered now (a hint: the next try checks
# again); a request behind a blocked one is not served before it. Then the watched key's PTTL.
_ACQUIRE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stops, watched, windows = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local margin, in_flight, answers = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local first_answer = 7 + 2 * windows
local first_request = first_answer + 3 * answers
local ttl = -2
if watched == 1 then ttl = redis.call('pttl', KEYS[#KEYS]) end
local stopped = false
for i = 1, stops do
  if redis.call('exists', KEYS[i]) == 1 then stopped = true end
end
local epoch_key = KEYS[stops + 1 + windows]
local epoch = tonumber(redis.call('get', epoch_key) or '-1')
if epoch < 0 then
  epoch = now
  redis.call('set', epoch_key, now)
end
for a = first_answer, first_request - 1, 3 do
  local bound = now - tonumber(ARGV[a + 2]) + margin
  for w = 1, windows do
    for j = 1, tonumber(ARGV[a + 1]) do
      redis.call('zadd', KEYS[stops + w], 'XX', bound, ARGV[a] .. ':' .. j)
    end
  end
end
local results = {}
local blocked = 0
for r = first_request, #ARGV, 2 do
  local token, cost = ARGV[r], tonumber(ARGV[r + 1])
  local wait = blocked
  if stopped then
    wait = -1
  elseif blocked == 0 then
    for w = 1, windows do
      local key = KEYS[stops + w]
      local limit, window_ms = tonumber(ARGV[2 * w + 5]), tonumber(ARGV[2 * w + 6])
      local settled = epoch + window_ms + margin + in_flight
      if now < settled then wait = math.max(wait, settled - now) end
      local bound = redis.call('zrevrange', key, limit - cost, limit - cost, 'withscores')[2]
      local legacy = KEYS[stops + windows + 1 + w]
      if redis.call('exists', legacy) == 1 then
        -- the list of slot times an older version kept (its entries were held margin_ms)
        local scores = {}
        local units = redis.call('zrevrange', key, 0, limit - 1, 'withscores')
        for i = 2, #units, 2 do scores[#scores + 1] = tonumber(units[i]) end
        for _, slot in ipairs(redis.call('lrange', legacy, 0, limit - 1)) do scores[#scores + 1] = tonumber(slot) + margin end
        table.sort(scores, function(x, y) return x > y end)
        bound = scores[limit - cost + 1]
      end
      bound = tonumber(bound)
      if bound and bound > now - window_ms then
        -- A request still in flight (its bound lies ahead) is likely answered soon: try
        -- again when it would be free had it been answered at once.
        if bound > now + margin then bound = math.max(now, bound - in_flight) end
        wait = math.max(wait, math.ceil(bound) + window_ms - now)
      end
    end
    if wait > 0 then
      blocked = wait
    else
      for w = 1, windows do
        local key = KEYS[stops + w]
        local limit, window_ms = tonumber(ARGV[2 * w + 5]), tonumber(ARGV[2 * w + 6])
        for j = 1, cost do redis.call('zadd', key, now + margin + in_flight, token .. ':' .. j) end
        redis.call('zremrangebyscore', key, '-inf', now - window_ms)
        redis.call('zremrangebyrank', key, 0, -(limit + 1))
        redis.call('pexpire', key, window_ms + margin + in_flight)
      end
    end
  end
  results[#results + 1] = wait
end
results[#results + 1] = ttl
return results
"""

# The line of reservations: returns the ms from now to the slot taken (rounded up), at
# least ARGV[1] ms away and ARGV[2] ms (a fraction: a limit above 1,000 a second has steps
# under a ms) after the previous one. The tail is kept in microseconds, written out whole
# (Lua's own number formatting would round a time in microseconds to 14 digits).
_RESERVE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tail = tonumber(redis.call('get', KEYS[1]) or '0')
local slot = math.max(now + tonumber(ARGV[1]) * 1000, tail + math.ceil(tonumber(ARGV[2]) * 1000))
redis.call('set', KEYS[1], string.format('%.0f', slot), 'px', math.ceil((slot - now) / 1000) + tonumber(ARGV[3]))
return math.ceil((slot - now) / 1000)
"""

# How far ahead of now the line reaches, in ms (0 when nobody waits).
_BACKLOG = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tail = tonumber(redis.call('get', KEYS[1]) or '0')
return math.ceil(math.max(0, tail - now) / 1000)
"""


def _tokens(tokens: Sequence[str] | None, costs: Sequence[int]) -> list[str]:
    return list(tokens) if tokens is not None else [f"t{time.monotonic_ns()}-{i}" for i in range(len(costs))]


class RedisWindows:
    """Moving windows and reservation lines in Redis, shared by every process.

    After Redis comes back without the limiter's keys (a restart without persistence, a
    flush) nothing is granted until one window (plus the bound of a request in flight) has
    passed, since the entries it lost could have filled the window: the ``epoch`` key
    records when this Redis first served the limiter. A new Redis waits one window too, and
    so does a campaign's own limit (a ``/day`` limit waits a day). A replica promoted after
    missing the last writes keeps the epoch key, so the entries it missed are not made up
    for: that bound is not kept.

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
        self, windows: list[Window], cost: int, stops: tuple[str, ...] = (), *, watch: str | None = None,
    ) -> tuple[int, int | None]:
        """Take ``cost`` from every (key, limit, window_ms) or none. Returns 0, the ms to
        wait, or -1 when one of the ``stops`` is set; and the PTTL of the ``watch`` key
        (a full key name, read in the same round trip), or None when none is watched."""
        waits, ttl_ms = self.acquire_many(windows, [cost], stops, watch=watch)
        return waits[0], ttl_ms

    def acquire_many(
        self, windows: list[Window], costs: list[int], stops: tuple[str, ...] = (), *, watch: str | None = None,
        tokens: Sequence[str] | None = None, answers: Sequence[Answer] = (), margin_ms: int = 0, in_flight_ms: int = 0,
    ) -> tuple[list[int], int | None]:
        """``acquire`` for several requests in one round trip, served in order: request i
        takes its units under ``tokens[i]``, bounded ``margin_ms + in_flight_ms`` after now;
        the ``answers`` are applied first."""
        args = [len(stops), 1 if watch else 0, len(windows), margin_ms, in_flight_ms, len(answers)]
        for _key, limit, window_ms in windows:
            args += [limit, window_ms]
        for token, cost, age_ms in answers:
            args += [token, cost, max(0, int(age_ms))]
        for token, cost in zip(_tokens(tokens, costs), costs):
            args += [token, cost]
        keys = [f"{self.prefix}:stop:{key}" for key in stops] + [f"{self.prefix}:units:{key}" for key, _l, _w in windows]
        keys.append(self.epoch_key)
        keys += [f"{self.prefix}:window:{key}" for key, _l, _w in windows]
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

    def reserve(self, key: str, earliest_ms: int, step_ms: float, ttl_ms: int) -> int:
        """The ms until the next place in ``key``'s line, at least ``earliest_ms`` away and
        ``step_ms`` after the previous place. (The tail is in microseconds, under a key of
        its own: an older version's line, in ms, is not read.)"""
        return int(self._reserve(keys=[f"{self.prefix}:line-us:{key}"], args=[earliest_ms, repr(float(step_ms)), ttl_ms]))

    def backlog_ms(self, key: str) -> int:
        return int(self._backlog(keys=[f"{self.prefix}:line-us:{key}"]))


class MemoryWindows:
    """The same in one process, for tests and a Redis-less demo (no epoch: nothing to lose)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._entries: dict[str, dict[str, float]] = {}
        self._tails: dict[str, float] = {}
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
        self, windows: list[Window], cost: int, stops: tuple[str, ...] = (), *, watch: str | None = None,
    ) -> tuple[int, int | None]:
        """As ``RedisWindows.acquire``; nothing is shared to watch, so the TTL is None."""
        waits, _ttl = self.acquire_many(windows, [cost], stops, watch=watch)
        return waits[0], None

    def acquire_many(
        self, windows: list[Window], costs: list[int], stops: tuple[str, ...] = (), *, watch: str | None = None,
        tokens: Sequence[str] | None = None, answers: Sequence[Answer] = (), margin_ms: int = 0, in_flight_ms: int = 0,
    ) -> tuple[list[int], None]:
        with self._lock:
            now = self._now_ms()
            for token, cost, age_ms in answers:
                for key, _limit, _window_ms in windows:
                    entries = self._entries.get(key, {})
                    for j in range(1, cost + 1):
                        if f"{token}:{j}" in entries:
                            entries[f"{token}:{j}"] = now - max(0, int(age_ms)) + margin_ms
            if self._stopped(stops):
                return [-1] * len(costs), None
            waits, blocked = [], 0
            for token, cost in zip(_tokens(tokens, costs), costs):
                wait = blocked
                if not blocked:
                    for key, limit, window_ms in windows:
                        scores = sorted(self._entries.setdefault(key, {}).values(), reverse=True)
                        if len(scores) > limit - cost and scores[limit - cost] > now - window_ms:
                            bound = scores[limit - cost]
                            if bound > now + margin_ms:  # in flight: try again as if answered now
                                bound = max(now, bound - in_flight_ms)
                            wait = max(wait, int(bound) + window_ms - now)
                    if wait:
                        blocked = wait
                    else:
                        for key, limit, window_ms in windows:
                            entries = self._entries[key]
                            entries.update({f"{token}:{j}": now + margin_ms + in_flight_ms for j in range(1, cost + 1)})
                            for member in [m for m, score in entries.items() if score <= now - window_ms]:
                                del entries[member]
                waits.append(wait)
            return waits, None

    def reserve(self, key: str, earliest_ms: int, step_ms: float, ttl_ms: int) -> int:
        with self._lock:
            now = self.clock() * 1000
            slot = max(now + earliest_ms, self._tails.get(key, 0.0) + step_ms)
            self._tails[key] = slot
            return math.ceil(slot - now)

    def backlog_ms(self, key: str) -> int:
        with self._lock:
            return math.ceil(max(0.0, self._tails.get(key, 0.0) - self.clock() * 1000))
