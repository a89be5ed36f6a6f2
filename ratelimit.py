"""A global rate limit for actors, shared by every worker process through Redis.

Raising ``RateLimitExceeded`` from inside an actor (Dramatiq's own limiters) spends the
message's retries and ends in the dead-letter queue once a backlog outlasts them. Here a
throttled message is re-enqueued for a moment when it can go and acknowledged: a
deferral, never a retry.

- **Exact where Twilio counts**: the slot is taken by the actor immediately before the
  HTTP call (``Gate.acquire``), not when the message is picked up, so the database work in
  between cannot bunch sends up. A unit taken stays in the window until a window after the
  latest moment its request can have reached Twilio: ``in_flight_ms`` after the slot while
  no answer has been reported, then its answer (``Gate.answered``, reported with this
  process's next try, so it costs no round trip); plus ``margin_ms`` for clock granularity.
  So a request delayed on its way (a new TLS connection, a slow proxy) delays the units
  that follow it, instead of landing in the next window's burst. (``in_flight_ms=None`` is
  the older rule, exact where the slot is taken: a unit is held ``margin_ms`` past its
  slot, whatever the answer.) Check and count are one Lua call, on Redis's own clock
  (``rate_windows``).
- **The fastest answer** (``fastest_after``): held past its answer, a unit is also held for
  the time the provider took to answer, so with answers in 200 ms a 1 s window is at most
  1 / 1.2 used. A request reaches the provider ``w`` after it leaves (its way there) and is
  answered ``p`` after that (the provider's own time and the way back); its answer less the
  fastest time from leaving to answer this process has measured, ``f = min(w + p)``, is
  still no earlier than its arrival when ``p >= f - margin_ms``. That holds when what
  varies is the way there (a slow proxy, jitter on the network: ``f`` is then about the
  constant ``p``) and when the way there is short (loopback, a provider that takes its
  time: ``f`` is then ``p``'s own floor); it fails by at most the fastest request's way
  there, less the margin, when the provider answers some request faster than the fastest
  round trip seen, or when requests that all spent long on their way (new connections
  through a slow proxy) are the only ones measured: so the rule is used only once
  ``fastest_after`` answers have been timed, and ``f`` counts the request's own time, so the
  bound is never before its slot. The time is from the request leaving to its answer
  (``answered(request_at=)``); an answer reported without it keeps the answer's time.
  The fastest answer is the fastest of both legs at once, ``min(w + p)``, which can be
  slower than a fast way there plus a fast answer when no one request had both (on
  saturated cores, threads wait for the GIL on one leg or the other): a request answered
  fast then frees its unit for a request that reaches the provider fast, too early by the
  difference. So only nine tenths of ``f`` are credited (``FASTEST_CUSHION``): that
  covers a spread of the legs of a tenth of ``f`` plus the margin (about 25 ms at Twilio's
  200 ms), for about 2% of a 1 s window's use. Measured: without it, four dynos on two
  saturated cores once counted 1,006 in a 1 s window at a limit of 1,000 at the fake.
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
import threading
import itertools
import time
import uuid
from typing import Callable, Mapping

from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware
from limits import RateLimitItem, parse

from batching import Combiner
from rate_gate import DEFERRED_MARK, Gate, Stopped, Throttled
from rate_windows import MemoryWindows, RedisWindows

#: The share of the fastest answer not credited to an answer (see "The fastest answer").
FASTEST_CUSHION = 0.1
#: ``fastest_after`` of the workers (``RATE_LIMIT_BOUND=fastest``): answers timed before the
#: fastest of them is trusted.
FASTEST_AFTER_ANSWERS = 100

__all__ = ["FASTEST_AFTER_ANSWERS", "Gate", "MemoryWindows", "RateLimit", "RedisWindows", "Stopped", "Throttled", "pacing", "slower"]


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
      margin_ms(int): Added to the latest time a request can reach the provider (clock
        granularity and drift; with ``in_flight_ms=None``, the whole allowance for the
        jitter between taking a slot and the provider receiving the request).
      in_flight_ms(int | None): How long after its slot a request whose answer has not been
        reported may still reach the provider (the HTTP timeout); once answered, the
        answer's time bounds it. None: answers are not used, a request is held
        ``margin_ms`` past its slot (exact where the slot is taken, not at the provider).
      fastest_after(int | None): Once this many answers have been timed from their
        request's leaving, a timed answer bounds its request at the answer less the fastest
        such time measured (see the module's docstring). None: at the answer.
      hold_ms(int): A wait up to this long is slept in the worker thread rather than
        sent back to the broker.
      lead_ms(int): A message deferred to a reserved slot is woken this much early (less
        than ``hold_ms``) and then waits in the thread, so that a late wake-up by the
        broker's delay queue does not leave its slot unused.
      sleep, monotonic: The thread's sleep and the clock answers are timed on (tests inject
        their own).

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
        margin_ms: int = 5,
        in_flight_ms: int | None = None,
        fastest_after: int | None = None,
        hold_ms: int = 500,
        lead_ms: int = 300,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = get_logger(__name__, type(self))
        self.limits: dict[str, RateLimitItem] = {name: parse(value) for name, value in limits.items()}
        self.windows = windows if windows is not None else MemoryWindows()
        self.margin_ms = margin_ms
        self.in_flight_ms = in_flight_ms
        self.fastest_after = fastest_after
        self._timed = 0
        self._fastest_s = math.inf
        self._token_prefix = f"{uuid.uuid4().hex[:10]}-"
        self._tokens = itertools.count()
        self._answers: dict[str, dict[str, tuple[int, float]]] = {}
        self._answers_lock = threading.Lock()
        self.hold_ms = hold_ms
        self.lead_ms = min(lead_ms, hold_ms)
        self.sleep = sleep
        self.monotonic = monotonic
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
        self._line_seen_until = time.monotonic() + 2 * (self.window_ms(item) + self.margin_ms) / 1000

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
        """``windows.acquire`` for one thread: (wait_ms, watched PTTL). Its request, if any,
        is bounded by ``in_flight_ms`` (no answer is reported for it)."""
        return self.take_token(windows, cost, stops, watch)[:2]

    def take_token(self, windows: list[tuple[str, int, int]], cost: int, stops: tuple[str, ...], watch: str | None):
        """``take``, and the token its units were taken under (for ``answered``); threads
        asking for the same limits at the same moment share one round trip (served in
        the order they asked)."""
        key = (tuple(windows), stops, watch)
        combiner = self._combiners.get(key)
        if combiner is None:
            if len(self._combiners) >= 1000:
                self._combiners.clear()
            combiner = self._combiners.setdefault(key, Combiner(functools.partial(self.take_many, windows, stops, watch)))
        return combiner.submit(cost)

    def take_many(self, windows, stops, watch, costs: list[int]) -> list[tuple[int, int | None, str]]:
        """``windows.acquire`` for a batch of costs, in one round trip, served in order:
        (wait_ms, watched PTTL, token) each. The round trip also carries the answers this
        process has seen for these windows since its last try."""
        tokens = [f"{self._token_prefix}{next(self._tokens)}" for _ in costs]
        answers = self._answers_for([key for key, _limit, _window_ms in windows])
        try:
            waits, watched_ttl_ms = self.windows.acquire_many(
                windows, costs, stops, watch=watch, tokens=tokens, answers=[a[:3] for a in answers],
                margin_ms=self.margin_ms, in_flight_ms=self.in_flight_ms or 0,
            )
        except BaseException:
            for token, cost, _age_ms, keys, at in answers:
                self.answered(keys, token, cost, at=at)  # applying one twice does no harm
            raise
        return [(wait, watched_ttl_ms, token) for wait, token in zip(waits, tokens)]

    def answered(self, keys: list[str], token: str, cost: int, *, at: float | None = None,
                 request_at: float | None = None) -> None:
        """The request that took ``cost`` units of the windows ``keys`` under ``token`` has
        been answered (at ``at``, on ``monotonic``; default now): it cannot reach the
        provider later. ``request_at``: when the request left, which times the answer for
        the fastest-answer bound. Sent with the next try of this process on any of those
        windows."""
        if self.in_flight_ms is None:
            return
        at = self.monotonic() if at is None else at
        with self._answers_lock:
            if request_at is not None and self.fastest_after is not None:
                self._timed += 1
                self._fastest_s = min(self._fastest_s, max(0.0, at - request_at))
                if self._timed > self.fastest_after:
                    # no earlier than request_at: its own time counts; a cushion kept back
                    at -= self._fastest_s * (1 - FASTEST_CUSHION)
            if sum(len(pending) for pending in self._answers.values()) >= 100_000:
                self._answers.clear()  # windows nobody asks for any more: their units stay bounded
            for key in keys:
                self._answers.setdefault(key, {})[token] = (cost, at)

    def _answers_for(self, keys: list[str]) -> list[tuple[str, int, int, list[str], float]]:
        """The answers pending for ``keys``, taken off: (token, cost, age_ms, keys, at)."""
        if self.in_flight_ms is None:
            return []
        now = self.monotonic()
        found: dict[str, tuple[int, float]] = {}
        with self._answers_lock:
            for key in keys:
                found.update(self._answers.pop(key, {}))
        # The age is rounded down: the bound Redis makes of it is never early.
        return [(token, cost, int((now - at) * 1000), keys, at) for token, (cost, at) in found.items()]

    def window_ms(self, item: RateLimitItem) -> int:
        """The window of a limit (the margin is added to each entry's bound)."""
        return item.get_expiry() * 1000

    def step_ms(self, item: RateLimitItem, cost: int = 1) -> float:
        """The spacing of the line of reservations: a window and the margin per limit."""
        return (self.window_ms(item) + self.margin_ms) * cost / item.amount

    def reserve(self, key: str, item: RateLimitItem, cost: int, *, earliest_ms: int) -> int:
        ttl_ms = self.window_ms(item) + self.margin_ms + (self.in_flight_ms or 0) + 60_000
        return self.windows.reserve(key, earliest_ms, self.step_ms(item, cost), ttl_ms)

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
