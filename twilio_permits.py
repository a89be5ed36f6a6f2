"""The global cap on requests in flight to Twilio (``TWILIO_MAX_CONCURRENT``), shared by
every worker process of every dyno through Redis.

Twilio answers 429 (20429) above an account's concurrency, so the workers together keep at
most ``cap`` requests open. Each process holds a **lease** on some permits in Redis and
hands them to its threads locally, so a message costs no Redis round trip for its permit:

- A process asks for what its threads want (in use + waiting, the peak since the last
  renewal) and renews its lease every ``renew_s``; when a thread finds no free permit, the
  renewal runs at once. While more is wanted than the cap, no process gets more than its
  fair share (``ceil(cap / processes wanting)``), so that every dyno sends.
- **A worker that dies** holding permits stops renewing: its lease expires ``lease_ms``
  after its last renewal and its permits go back to the others. A process that cannot renew
  for ``lease_ms`` (Redis away) starts nothing new until it has renewed.
- **A Redis that restarted empty** (or was flushed) has lost the leases while their
  requests may still be open: as the rate limiter does (``ratelimit.RedisWindows``), an
  epoch key says when this Redis first served the permits, and for one lease after it no
  process grows beyond what it already has in flight, which every live process re-registers
  at its next renewal; so the cap holds across the restart. (A process stalled for longer
  than a lease, a GIL-starved or stopped one, comes back with its requests still open:
  then the cap may be passed by those, once.)

``MemoryPermits`` is the same in one process (the stub broker, tests).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

# KEYS: held (hash holder -> permits), wants (hash holder -> wanted), expiry (zset holder ->
# ms), epoch. ARGV: holder, want, floor (permits in use, never taken back), cap, lease_ms.
# Returns the permits the holder may use from now on (in use included).
_LEASE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder, want, floor = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local cap, lease_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
for _, dead in ipairs(redis.call('zrangebyscore', KEYS[3], '-inf', now)) do
  redis.call('hdel', KEYS[1], dead)
  redis.call('hdel', KEYS[2], dead)
  redis.call('zrem', KEYS[3], dead)
end
local epoch = tonumber(redis.call('get', KEYS[4]) or '-1')
if epoch < 0 then
  epoch = now
  redis.call('set', KEYS[4], now)
end
local others, wanted, wanting = 0, want, 0
if want > 0 then wanting = 1 end
local held = redis.call('hgetall', KEYS[1])
for i = 1, #held, 2 do
  if held[i] ~= holder then others = others + tonumber(held[i + 1]) end
end
local wants = redis.call('hgetall', KEYS[2])
for i = 1, #wants, 2 do
  if wants[i] ~= holder then
    local w = tonumber(wants[i + 1])
    wanted = wanted + w
    if w > 0 then wanting = wanting + 1 end
  end
end
local grant = math.min(want, cap - others)
if wanted > cap and wanting > 0 then grant = math.min(grant, math.ceil(cap / wanting)) end
if now < epoch + lease_ms then grant = math.min(grant, floor) end
if grant < 0 then grant = 0 end
redis.call('hset', KEYS[1], holder, math.max(grant, floor))
redis.call('hset', KEYS[2], holder, want)
redis.call('zadd', KEYS[3], now + lease_ms, holder)
for i = 1, 3 do redis.call('pexpire', KEYS[i], 10 * lease_ms) end
return grant
"""

_RETURN = """
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('zrem', KEYS[3], ARGV[1])
return 1
"""


class RedisPermits:
    """The leases of every process, in Redis.

    Parameters:
      client: A redis-py client.
      prefix(str): The prefix of every key.
    """

    def __init__(self, client, *, prefix: str) -> None:
        self.keys = [f"{prefix}:held", f"{prefix}:wants", f"{prefix}:expiry", f"{prefix}:epoch"]
        self.epoch_key = self.keys[3]
        self._lease = client.register_script(_LEASE)
        self._return = client.register_script(_RETURN)

    def lease(self, holder: str, *, want: int, floor: int, cap: int, lease_ms: int) -> int:
        return int(self._lease(keys=self.keys, args=[holder, want, floor, cap, lease_ms]))

    def give_back(self, holder: str) -> None:
        self._return(keys=self.keys[:3], args=[holder])


class MemoryPermits:
    """The same leases in one process (no epoch: nothing is lost but with the process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._held: dict[str, tuple[int, int, float]] = {}  # holder -> (held, want, expires)
        self._lock = threading.Lock()

    def lease(self, holder: str, *, want: int, floor: int, cap: int, lease_ms: int) -> int:
        with self._lock:
            now = self.clock()
            self._held = {h: v for h, v in self._held.items() if v[2] > now}
            others = [v for h, v in self._held.items() if h != holder]
            wanted = want + sum(v[1] for v in others)
            wanting = (want > 0) + sum(1 for v in others if v[1] > 0)
            grant = min(want, cap - sum(v[0] for v in others))
            if wanted > cap and wanting:
                grant = min(grant, math.ceil(cap / wanting))
            grant = max(grant, 0)
            self._held[holder] = (max(grant, floor), want, now + lease_ms / 1000)
            return grant

    def give_back(self, holder: str) -> None:
        with self._lock:
            self._held.pop(holder, None)


class PermitPool:
    """This process's permits: ``with pool.permit():`` around a request to Twilio.

    Parameters:
      store: ``RedisPermits`` (shared by every process) or ``MemoryPermits``.
      cap(int): ``TWILIO_MAX_CONCURRENT``, across every process sharing ``store``.
      lease_ms(int): How long a lease lasts without renewal.
      renew_s(float): How often the lease is renewed (well under ``lease_ms``).
      max_wait_s(float): A thread waits at most this long for a permit, then gets
        ``NoPermit`` (nothing was sent).
    """

    #: Permits held before the hold time is trusted for ``ceiling_per_s``.
    MIN_SAMPLES = 200
    #: A renewal asked for by a waiting thread comes at most this often.
    MIN_RENEW_GAP_S = 0.02

    def __init__(self, store, *, cap: int, lease_ms: int = 3_000, renew_s: float = 0.5, max_wait_s: float = 60.0) -> None:
        self.store = store
        self.cap = cap
        self.lease_ms = lease_ms
        self.renew_s = renew_s
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._pid = 0
        self._reset()

    def _reset(self) -> None:
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._pid = os.getpid()
        self.capacity = 0
        self.in_use = 0
        self.waiting = 0
        self._peak = 0
        self._renewed_at = float("-inf")
        self._samples, self._mean_hold_s, self._told = 0, 0.0, False
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextmanager
    def permit(self) -> Iterator[None]:
        self.acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            self.release(held_s=time.monotonic() - started)

    @property
    def ceiling_per_s(self) -> float | None:
        """The most requests a second the cap allows at the hold times seen so far (None
        before ``MIN_SAMPLES``): ``cap / mean time a permit is held``."""
        if self._samples < self.MIN_SAMPLES or self._mean_hold_s <= 0:
            return None
        return self.cap / self._mean_hold_s

    def unreachable(self, limit_per_s: float) -> str | None:
        """Once per process: the sentence saying that ``limit_per_s`` cannot be reached
        under the cap at the measured hold time, if so (else None, and asked again later)."""
        ceiling = self.ceiling_per_s
        if self._told or ceiling is None or limit_per_s <= ceiling:
            return None
        self._told = True
        return (f"the SMS rate limit ({limit_per_s:,.0f}/s) cannot be reached: TWILIO_MAX_CONCURRENT={self.cap} "
                f"requests in flight at {self._mean_hold_s * 1000:.0f} ms each allow at most {ceiling:.0f}/s; "
                f"raise TWILIO_MAX_CONCURRENT to {math.ceil(limit_per_s * self._mean_hold_s)} (if the account allows) "
                f"or lower the limit")

    def acquire(self) -> None:
        deadline = time.monotonic() + self.max_wait_s
        with self._cond:
            self._ensure_thread()
            if not self._usable():
                self.waiting += 1
                self._peak = max(self._peak, self.in_use + self.waiting)
                self._wake.set()
                try:
                    while not self._usable():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise NoPermit(f"no permit to call Twilio within {self.max_wait_s:g} s "
                                           f"(TWILIO_MAX_CONCURRENT={self.cap})")
                        self._cond.wait(min(left, self.renew_s))
                finally:
                    self.waiting -= 1
            self.in_use += 1
            self._peak = max(self._peak, self.in_use)

    def release(self, *, held_s: float | None = None) -> None:
        with self._cond:
            self.in_use -= 1
            self._cond.notify()
            if held_s is not None:
                self._samples += 1
                weight = max(1 / self._samples, 0.01)  # the mean, then a moving average
                self._mean_hold_s += weight * (held_s - self._mean_hold_s)

    def _usable(self) -> bool:
        fresh = time.monotonic() - self._renewed_at < self.lease_ms / 1000
        return fresh and self.in_use < self.capacity

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's lease and thread are not ours
            self._reset()
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="twilio-permits", daemon=True)
            self._thread.start()

    def renew(self) -> int:
        """Renew the lease now for what is wanted (in use, waiting, the recent peak)."""
        with self._cond:
            want, floor = min(self.cap, max(self._peak, self.in_use + self.waiting)), self.in_use
            self._peak = self.in_use + self.waiting
        started = time.monotonic()
        granted = self.store.lease(self.holder, want=want, floor=floor, cap=self.cap, lease_ms=self.lease_ms)
        with self._cond:
            self.capacity, self._renewed_at = granted, started
            self._cond.notify_all()
        return granted

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.renew_s)
            self._wake.clear()
            if self._closed:
                break
            gap_s = self._renewed_at + self.MIN_RENEW_GAP_S - time.monotonic()
            if gap_s > 0:
                time.sleep(gap_s)
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - Redis away: try again; the lease runs out meanwhile
                logger.warning("could not renew the Twilio permits lease (%s); trying again", type(exc).__name__)
                time.sleep(self.renew_s)

    def close(self) -> None:
        """Stop renewing and give the lease back (at worker shutdown)."""
        if self._pid != os.getpid() or self._thread is None:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(2)
        try:
            self.store.give_back(self.holder)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            pass


class NoPermit(Exception):
    """No permit came within the wait: the request was not made."""
