"""Work per ``send_sms``, counted (not timed), so that a regression fails the suite:
database queries, and Redis round trips of the rate limiter and the metrics debouncer."""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
import redis
from dramatiq.broker import MessageProxy
from playhouse.test_utils import count_queries

import actors
import claims
import fanout
from actors.services import configure_services, get_services
from metrics import MetricsDebouncer
from actors.sms import SlotTaker
from models import Customer, Message, MessageStatus, PooledPostgres, database
from quiet import QuietHours
from ratelimit import RateLimit, RedisWindows
from tests.conftest import REDIS_URL
from tests.factories import make_campaign, make_customers


class CountingRedis(redis.Redis):
    """A real Redis client that counts the commands it sends (each one round trip)."""

    commands = 0

    def execute_command(self, *args, **options):
        type(self).commands += 1
        return super().execute_command(*args, **options)


def process(message_id: int) -> None:
    """What a worker thread does with one message (middleware, actor, middleware), and
    then its writer thread (the "sent" record)."""
    message = MessageProxy(actors.send_sms.message(message_id))
    actors.broker.emit_before("process_message", message)
    actors.send_sms(message_id)
    actors.broker.emit_after("process_message", message, result=None)
    assert get_services().sent_records.flush(10)


@pytest.fixture
def counted(stub_broker):
    """The rate limiter on a counting Redis client, under a prefix of its own; a debouncer
    on the same client. Yields (client, prefix, debouncer); the keys are deleted after."""
    client = CountingRedis.from_url(REDIS_URL)
    prefix = f"test-rt-{uuid.uuid4().hex[:8]}"
    limiter = next(m for m in stub_broker.middleware if isinstance(m, RateLimit))
    limiter.windows = RedisWindows(client, prefix=prefix)
    client.set(limiter.windows.epoch_key, 0)  # a Redis that has served the limiter for long
    if isinstance(database.obj, PooledPostgres):
        # A worker's pool holds its own connections, not those earlier tests' threads gave back.
        database.obj.close_idle()
    yield client, prefix, MetricsDebouncer(redis=client, delay_ms=5_000, prefix=prefix)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def claim_requests(message_ids: list[int], debouncer: MetricsDebouncer, quiet) -> list[claims.ClaimRequest]:
    """The claim requests worker threads would make for these messages, each with its gate."""
    requests = []
    for message_id in message_ids:
        message = MessageProxy(actors.send_sms.message(message_id))
        actors.broker.emit_before("process_message", message)
        requests.append(claims.ClaimRequest(message_id, 0, SlotTaker(RateLimit.current_gate(), debouncer), quiet))
        actors.broker.emit_after("process_message", message, result=None)
    return requests


def test_send_sms_costs_two_queries_and_one_redis_round_trip(db, counted, twilio_backend):
    # Given 20 pending messages, the rate limiter and the debouncer on a counting Redis client
    make_customers(20)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    ids = [m.id for m in Message.select(Message.id).order_by(Message.id)]
    _client, _prefix, debouncer = counted
    configure_services(debouncer=debouncer)

    # When the first two are processed as a worker would (on PostgreSQL this PREPAREs the
    # statements on each connection taken from the pool: a thread gives its connection back
    # after each message, and the writer thread may take that one, the thread another),
    # and then the other 18
    with count_queries() as first:
        process(ids[0])
        process(ids[1])
    CountingRedis.commands = 0
    with count_queries() as queries:
        for message_id in ids[2:]:
            process(message_id)

    # Then each of the 18 took 2 queries (claim, record: the fan-out rendered the text)
    # and one Redis round trip (the rate-limit slot, which also tells that the metrics
    # update the first one requested is still to come)
    assert Message.select().where(Message.status == MessageStatus.SENT).count() == 20
    assert queries.count == 2 * 18, [q.msg for q in queries.get_queries()][:6]
    assert CountingRedis.commands == 18
    prepares = sum(q.msg[0].startswith("PREPARE") for q in first.get_queries())
    assert first.count == 2 * 2 + prepares
    if isinstance(database.obj, PooledPostgres):
        assert "send_claim_rendered_many" in database.connection().prepared  # the writer has its own
        assert all(q.msg[0].startswith("EXECUTE") for q in queries.get_queries())
    else:
        assert prepares == 0


def test_a_send_skips_the_metrics_ask_only_while_the_pending_update_surely_comes_after_it():
    # Given two processes' debouncers on one Redis, and process A's update pending for campaign 7
    client = CountingRedis.from_url(REDIS_URL)
    prefix = f"test-db-{uuid.uuid4().hex[:8]}"
    a = MetricsDebouncer(redis=client, delay_ms=1_000, prefix=prefix)
    b = MetricsDebouncer(redis=client, delay_ms=1_000, prefix=prefix)
    try:
        assert a.claim(7)

        # When B's rate-limit slot brings back the key's TTL (read here directly) and B commits
        b.saw_ttl(7, client.pttl(b.key(7)), seen_at=time.monotonic())
        CountingRedis.commands = 0

        # Then B need not ask: A's update reads after this commit
        assert not b.claim(7)
        assert CountingRedis.commands == 0

        # But when the pending update is due to read in a moment (within the clocks' slack),
        # B asks Redis, and finds the update still pending
        client.set(b.key(8), "1", px=b.ttl_ms - b.delay_ms + 10)
        b.saw_ttl(8, client.pttl(b.key(8)), seen_at=time.monotonic())
        CountingRedis.commands = 0
        assert not b.claim(8)
        assert CountingRedis.commands == 1

        # And once no update is pending (the key is gone), B's ask enqueues the next one
        b.saw_ttl(9, -2, seen_at=time.monotonic())
        assert b.claim(9)
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


def test_a_batch_of_claims_takes_its_slots_in_one_round_trip_after_quiet_hours(db, counted, twilio_backend):
    # Given five pending messages, the fourth to a customer in Tokyo, where it is 01:00 when
    # it is noon in New York; each message has its own rate-limit gate on a counting client
    make_customers(5)
    tokyo = Customer.select().order_by(Customer.id)[3]
    Customer.update(time_zone="Asia/Tokyo").where(Customer.id == tokyo.id).execute()
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    ids = [m.id for m in Message.select(Message.id).order_by(Message.id)]
    client, prefix, debouncer = counted
    quiet = claims.QuietPolicy(QuietHours.parse("21:00-08:00"), "America/New_York",
                                clock=lambda: dt.datetime(2026, 6, 1, 16, 0))
    requests = claim_requests(ids, debouncer, quiet)

    # When the five are claimed as one batch
    CountingRedis.commands = 0
    results = claims.claim_rendered_many(requests)

    # Then all five are claimed, the four outside quiet hours got their slots in one
    # round trip, and the one in Tokyo got none: it will be deferred, not sent
    assert [message.id for message, _ in results] == ids
    assert CountingRedis.commands == 1
    firsts = [first for _, first in results]
    assert isinstance(firsts[3], claims.QuietNow)
    assert [first[0] for i, first in enumerate(firsts) if i != 3] == [0, 0, 0, 0]
    assert client.zcard(f"{prefix}:units:sms") == 4


class QuietThatFailsFor:
    """Quiet hours whose check fails unexpectedly for one number."""

    def __init__(self, phone: str) -> None:
        self.phone = phone

    def check(self, message) -> None:
        if message.to_phone == self.phone:
            raise LookupError("time zone data missing")


def test_an_error_about_one_message_of_a_batch_stays_with_that_message(db, counted, twilio_backend):
    # Given three pending messages claimed as one batch, and a quiet-hours check that fails
    # for the second one only
    make_customers(3)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    rows = list(Message.select().order_by(Message.id))
    client, prefix, debouncer = counted
    quiet = QuietThatFailsFor(rows[1].to_phone)
    requests = claim_requests([row.id for row in rows], debouncer, quiet)

    # When the batch is claimed
    results = claims.claim_rendered_many(requests)

    # Then the others got their slots, and the second its own error (which its send
    # raises, undoing its claim) and no slot
    firsts = [first for _, first in results]
    assert firsts[0][0] == 0 and firsts[2][0] == 0 and isinstance(firsts[1], LookupError)
    assert client.zcard(f"{prefix}:units:sms") == 2
