"""One message's passage through its rate limits (``ratelimit.RateLimit`` makes one per
message of a limited actor): the slot taken right before the request, the answer
reported, the deferral of a throttled message. The exceptions the actor meets are here."""

from __future__ import annotations

import random
import time

from dramatiq.middleware import SkipMessage

DEFERRED_MARK = "_deferred_by_rate_limit"


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


class Gate:
    """One message's passage through its limits.

    All of its limits are taken together or not at all, and it waits in the line of the
    slowest one, whose spacing is the one that binds. ``middleware`` is the
    ``ratelimit.RateLimit`` that made it (its windows, its line, its answers).
    """

    def __init__(self, middleware, broker, message, checks) -> None:
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
        self._taken: tuple[str, int] | None = None

    @property
    def group(self) -> tuple:
        """Gates with equal groups take their slots from the same windows and stop key."""
        return (tuple(self.windows), self.stops)

    def take_many(self, costs: list[int], *, watch: str | None = None) -> list[tuple[int, int | None, str] | None]:
        """One try at the slots of several messages of this gate's group, in order, in one
        round trip: (wait_ms, watched PTTL, token) for each, to pass to its
        ``acquire(first=)``; None for a cost no limit could ever grant (its ``acquire``
        says so)."""
        fits = [all(cost <= item.amount for _key, item in self.checks) for cost in costs]
        fitting = [cost for cost, ok in zip(costs, fits) if ok]
        tries = iter(self.middleware.take_many(self.windows, self.stops, watch, fitting) if fitting else ())
        return [next(tries) if ok else None for ok in fits]

    def acquire(self, cost: int = 1, *, watch: str | None = None, first: tuple | None = None) -> int | None:
        """Take ``cost`` units of every limit now, or within ``hold_ms``; else Throttled.

        Returns the PTTL (ms) of the Redis key ``watch`` as the slot was taken, read in the
        same round trip (None without one, or without Redis): a caller that would otherwise
        ask Redis about that key right after gets the answer for free. ``first`` is the
        outcome of a first try already made by ``take_many``. Call ``answered`` once the
        provider has answered the request the slot was for.
        """
        mw = self.middleware
        for _key, item in self.checks:
            if cost > item.amount:
                raise ValueError(f"a cost of {cost} can never fit a limit of {item.amount}")
        hold_until = time.monotonic() + mw.hold_ms / 1000
        while True:
            if first is not None:
                (wait_ms, watched_ttl_ms, token), first = first, None
            else:
                wait_ms, watched_ttl_ms, token = mw.take_token(self.windows, cost, self.stops, watch)
            if wait_ms < 0:
                raise Stopped(self.stop_key)
            if wait_ms == 0:
                break
            mw.saw_full_window(self.line[1])
            if time.monotonic() + wait_ms / 1000 > hold_until:
                if self.reserved:
                    # Keep its place, but do not wake with every other early bird at once.
                    raise Throttled(wait_ms + int(random.uniform(0, mw.step_ms(self.line[1]))), reserved=True)
                raise Throttled(mw.reserve(*self.line, cost, earliest_ms=wait_ms), reserved=True)
            mw.sleep(wait_ms / 1000)
        self.message.options.pop("rate_reserved", None)
        self._taken = (token, cost)
        return watched_ttl_ms

    def answered(self, *, request_at: float | None = None) -> None:
        """The provider has answered the request this gate's slot was for (any answer: it
        had the request), so that request cannot be counted there later than now.
        ``request_at`` (on the middleware's ``monotonic``): when the request left, for the
        fastest-answer bound. Nothing when no slot was taken, or it was reported already."""
        if self._taken is not None:
            (token, cost), self._taken = self._taken, None
            keys = [key for key, _limit, _window_ms in self.windows]
            self.middleware.answered(keys, token, cost, request_at=request_at)

    def defer(self, throttled: Throttled):
        """Re-enqueue the message for its slot and skip it (acknowledged, not retried)."""
        message = self.message
        deferrals = message.options.get("deferrals", 0) + 1
        self.middleware.logger.debug("Deferring message %r by %d ms.", message.message_id, throttled.delay_ms)
        copy = message.copy(options={"deferrals": deferrals, "rate_reserved": throttled.reserved})
        self.broker.enqueue(copy, delay=max(1, throttled.delay_ms - self.middleware.lead_ms))
        setattr(message, DEFERRED_MARK, True)
        raise SkipMessage(f"rate limited; deferred by {throttled.delay_ms} ms")
