"""The rate-limit middleware on its own broker, with ``memory://`` storage."""

from __future__ import annotations

import time

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage
from limits.storage import MemoryStorage

from ratelimit import RateLimit


@pytest.fixture
def limited():
    broker = StubBroker(middleware=[])
    middleware = RateLimit(limits={"sms": "3/minute"}, storage=MemoryStorage())
    broker.add_middleware(middleware)

    @dramatiq.actor(broker=broker, queue_name="q", rate_limit="sms")
    def limited_actor(n):
        pass

    @dramatiq.actor(broker=broker, queue_name="q")
    def free_actor(n):
        pass

    return broker, middleware, limited_actor, free_actor


def test_throttled_messages_are_deferred_not_retried(limited):
    broker, middleware, limited_actor, _ = limited
    # Given a limit of 3 a minute
    messages = [MessageProxy(limited_actor.message(n)) for n in range(5)]

    # When five messages are processed at once
    passed, deferred = 0, 0
    for message in messages:
        try:
            middleware.before_process_message(broker, message)
            passed += 1
        except SkipMessage:
            deferred += 1

    # Then three pass, and two are re-enqueued on the delay queue, each for its own slot:
    # the first when the window frees (~60 s), the next one slot (60 s / 3) later
    assert (passed, deferred) == (3, 2)
    delayed = [dramatiq.Message.decode(raw) for raw in broker.queues["q.DQ"].queue]
    assert len(delayed) == 2
    now_ms = time.time() * 1000
    etas = sorted(m.options["eta"] - now_ms for m in delayed)
    assert 55_000 < etas[0] <= 60_500
    assert 75_000 < etas[1] <= 80_500
    for message in delayed:
        assert message.options["deferrals"] == 1
        assert "retries" not in message.options
    assert broker.dead_letters == []


def test_actors_without_a_limit_are_not_counted(limited):
    broker, middleware, _, free_actor = limited
    for n in range(10):
        middleware.before_process_message(broker, MessageProxy(free_actor.message(n)))
    assert middleware.limiter.get_window_stats(middleware.limits["sms"], "sms").remaining == 3


def test_rate_cost_charges_several_units(limited):
    broker, middleware, limited_actor, _ = limited
    heavy = MessageProxy(limited_actor.message_with_options(args=(1,), rate_cost=2))
    middleware.before_process_message(broker, heavy)
    assert middleware.limiter.get_window_stats(middleware.limits["sms"], "sms").remaining == 1
    with pytest.raises(SkipMessage):
        middleware.before_process_message(broker, MessageProxy(limited_actor.message_with_options(args=(2,), rate_cost=2)))


def test_the_rate_limit_option_is_declared_by_the_middleware(limited):
    broker, *_ = limited
    assert {"rate_limit", "rate_cost"} <= broker.actor_options
