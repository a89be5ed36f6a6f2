"""The global cap on requests in flight to Twilio (``twilio_permits.py``) on a real Redis,
and a worker whose threads outnumber its database connections."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from dramatiq import Worker
import redis

import actors
import fanout
from actors.services import ConnectionFreeWhileWaiting, configure_services, get_services, reset_services
from models import Campaign, Message, MessageStatus, database
from smsservice import make_backend
from tests.conftest import REDIS_URL, twilio_settings
from tests.factories import make_campaign, make_customers
from twilio_permits import MemoryPermits, PermitPool, RedisPermits


@pytest.fixture
def store():
    """Permits under a prefix of their own on the tests' Redis; the keys are deleted after."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-permits-{uuid.uuid4().hex[:8]}"
    permits = RedisPermits(client, prefix=prefix)
    client.set(permits.epoch_key, 0)  # a Redis that has served the permits for long
    yield permits, client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def test_pools_of_several_processes_never_have_more_than_the_cap_in_flight(store):
    # Given three processes' pools sharing a cap of 5, and 30 threads using them
    permits, _client, _prefix = store
    pools = [PermitPool(permits, cap=5, renew_s=0.05) for _ in range(3)]
    in_flight, most, done = 0, 0, []
    lock = threading.Lock()

    def request(pool: PermitPool) -> None:
        nonlocal in_flight, most
        for _ in range(4):
            with pool.permit():
                with lock:
                    in_flight += 1
                    most = max(most, in_flight)
                time.sleep(0.01)
                with lock:
                    in_flight -= 1
        done.append(1)

    # When every thread makes 4 requests
    threads = [threading.Thread(target=request, args=(pools[i % 3],)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for pool in pools:
        pool.close()

    # Then all 120 were made, never more than 5 at once, and more than one at once
    assert len(done) == 30
    assert 1 < most <= 5


def test_a_dead_workers_permits_come_back_when_its_lease_expires(store):
    # Given a worker that took all 4 permits and died (its lease of 300 ms is not renewed)
    permits, _client, _prefix = store
    assert permits.lease("dead", want=4, floor=4, cap=4, lease_ms=300) == 4

    # When another process asks while the lease runs, and again after it ran out
    while_alive = permits.lease("alive", want=4, floor=0, cap=4, lease_ms=300)
    time.sleep(0.4)
    after = permits.lease("alive", want=4, floor=0, cap=4, lease_ms=300)

    # Then it got none at first, and all four once the dead worker's lease expired
    assert while_alive == 0
    assert after == 4


def test_a_redis_that_restarted_empty_grants_no_more_than_what_is_in_flight_for_one_lease(store):
    # Given process A with 3 requests in flight under a cap of 5, and a Redis that lost
    # every key of the permits (a restart without persistence)
    permits, client, prefix = store
    assert permits.lease("A", want=3, floor=0, cap=5, lease_ms=400) == 3
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)

    # When A renews (its 3 still in flight) and B asks for 5, within one lease of the restart
    a_young = permits.lease("A", want=5, floor=3, cap=5, lease_ms=400)
    b_young = permits.lease("B", want=5, floor=0, cap=5, lease_ms=400)
    time.sleep(0.45)
    a_later = permits.lease("A", want=3, floor=3, cap=5, lease_ms=400)
    b_later = permits.lease("B", want=5, floor=0, cap=5, lease_ms=400)

    # Then nobody grew while the lost leases could still be in flight: A kept its 3, B got
    # none; once a lease had passed, B got what A does not hold
    assert (a_young, b_young) == (3, 0)
    assert (a_later, b_later) == (3, 2)


def test_while_more_is_wanted_than_the_cap_each_process_is_held_to_its_fair_share(store):
    # Given process A holding all 4 permits of the cap
    permits, _client, _prefix = store
    assert permits.lease("A", want=4, floor=0, cap=4, lease_ms=5_000) == 4

    # When B wants 4 too, then A renews with its 4 in flight, then finishes 2 of them
    b_first = permits.lease("B", want=4, floor=0, cap=4, lease_ms=5_000)
    a_renewed = permits.lease("A", want=4, floor=4, cap=4, lease_ms=5_000)
    a_after = permits.lease("A", want=4, floor=2, cap=4, lease_ms=5_000)
    b_then = permits.lease("B", want=4, floor=0, cap=4, lease_ms=5_000)

    # Then B waited while A held them all, A was cut to its half (starting nothing new
    # until it was under it), and B got the other half once A had given it back
    assert b_first == 0
    assert a_renewed == 2 and a_after == 2
    assert b_then == 2


def test_the_memory_store_grants_like_the_redis_one(store):
    # Given the same sequence on both stores
    permits, _client, _prefix = store
    memory = MemoryPermits()

    def sequence(s) -> list[int]:
        return [s.lease("A", want=4, floor=0, cap=4, lease_ms=5_000), s.lease("B", want=4, floor=0, cap=4, lease_ms=5_000),
                s.lease("A", want=4, floor=4, cap=4, lease_ms=5_000), s.lease("A", want=4, floor=2, cap=4, lease_ms=5_000),
                s.lease("B", want=4, floor=0, cap=4, lease_ms=5_000)]

    # When both run it, Then they grant the same
    assert sequence(memory) == sequence(permits) == [4, 0, 2, 2, 2]


def test_a_limit_the_cap_cannot_reach_is_told_once():
    # Given a cap of 100 whose permits were each held 200 ms, 200 times
    pool = PermitPool(MemoryPermits(), cap=100)
    for _ in range(200):
        pool.acquire()
        pool.release(held_s=0.2)

    # When a limit of 1000/s, then again, and one of 400/s are checked against it
    told = pool.unreachable(1000)
    again = pool.unreachable(1000)

    # Then the first says the ceiling (100 / 0.2 s = 500/s) and what would reach the
    # limit; the second says nothing; and 400/s is under the ceiling
    assert told is not None and "at most 500/s" in told and "TWILIO_MAX_CONCURRENT to 200" in told
    assert again is None
    assert PermitPool(MemoryPermits(), cap=100).unreachable(400) is None
    pool.close()


def test_a_process_builds_its_services_once_when_its_threads_ask_at_the_same_moment(stub_broker):
    # Given a process that has not built its services yet
    reset_services()
    seen, start = [], threading.Barrier(16)

    def ask() -> None:
        start.wait()
        seen.append(get_services())

    # When 16 threads ask at once (a worker's first messages)
    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    # Then they all got one and the same (one writer thread, one lease)
    assert len(seen) == 16 and len({id(s) for s in seen}) == 1


def test_a_worker_keeps_more_requests_in_flight_than_it_has_database_connections(postgres_db, stub_broker, fake_twilio):
    # Given a worker of 24 threads on a pool of at most 8 connections, a Twilio answering
    # in 300 ms, and 48 pending messages
    fake_twilio.latency_s = 0.3
    configure_services(backend=ConnectionFreeWhileWaiting(make_backend(twilio_settings(fake_twilio, twilio_timeout_s=5))),
                       permits=PermitPool(MemoryPermits(), cap=100))
    assert database.obj._max_connections == 8
    make_customers(48)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
    Campaign.update(dispatch_token="test").where(Campaign.id == campaign_id).execute()
    ids = [m.id for m in Message.select(Message.id).where(Message.status == MessageStatus.PENDING)]
    worker = Worker(stub_broker, worker_timeout=50, worker_threads=24)
    worker.start()
    try:
        # When they are sent
        for message_id in ids:
            actors.send_sms.send(message_id)
        stub_broker.join("sms", timeout=60_000)
        assert get_services().sent_records.flush(30)
    finally:
        worker.stop()

    # Then every one was sent, none retried, and the fake had more than 8 requests open at
    # once (requests received within one latency of each other)
    assert Message.select().where(Message.status == MessageStatus.SENT).count() == 48
    assert not stub_broker.dead_letters
    times = sorted(r["at"] for r in fake_twilio.requests)
    most_open = max(sum(1 for u in times if t <= u < t + 0.3) for t in times)
    assert most_open > 8
