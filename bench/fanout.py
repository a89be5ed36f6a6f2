"""Fan-out bench: recording every customer's outcome row, against a plain baseline.

    python -m bench.fanout [--sizes 10000 100000]

For each size, on PostgreSQL, in this process:
 (a) baseline: ``insert_many`` of the same number of message rows, plus a pipelined
     enqueue of the same number of messages to Redis;
 (b) the project's ``fanout.fan_out`` (eligibility, phone normalisation, rows for
     everyone; sends are then enqueued by the paced dispatcher, a window at a time).
Prints both times, the ratio, and the fan-out's peak traced memory (a separate run under
tracemalloc, which slows it down).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import redis
from dramatiq import Message as BrokerMessage
from dramatiq.brokers.redis import RedisBroker

from bench.common import REDIS_URL, delete_namespace, namespace, print_peak_ratio, reset_database


def reset_db(size: int) -> int:
    from models import database
    from tests.factories import make_customers

    reset_database()
    database.connect()
    make_customers(size)
    return size


def baseline(size: int) -> float:
    from models import Campaign, Customer, Message, database

    campaign = Campaign.create(name="baseline", template="x")
    ids = [c.id for c in Customer.select(Customer.id)]
    ns = namespace("bench-fanout")
    broker = RedisBroker(url=REDIS_URL, namespace=ns)
    started = time.perf_counter()
    for i in range(0, len(ids), 500):
        with database.atomic():
            Message.insert_many([{"campaign": campaign.id, "customer": cid, "status": "pending"} for cid in ids[i:i + 500]]).execute()
    pipe = broker.client.pipeline(transaction=False)
    for cid in ids:
        message = BrokerMessage(queue_name="sms", actor_name="send_sms", args=(cid,), kwargs={}, options={})
        pipe.hset(f"{ns}:sms.msgs", message.message_id, message.encode())
        pipe.rpush(f"{ns}:sms", message.message_id)
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    delete_namespace(redis.Redis.from_url(REDIS_URL), ns)
    broker.close()
    return elapsed


def project(size: int, *, traced: bool) -> tuple[float, int]:
    import fanout
    from tests.factories import make_campaign

    campaign_id = make_campaign()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    result = fanout.fan_out(campaign_id, short_url_base="https://x.test/q", batch_size=500)
    elapsed = time.perf_counter() - started
    peak = 0
    if traced:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert result.recorded == size, result
    return elapsed, peak


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args(argv)
    peaks = {}
    for size in args.sizes:
        reset_db(size)
        base = baseline(size)
        fan, _ = project(size, traced=False)
        _, peak = project(size, traced=True)
        peaks[size] = peak
        print(f"{size:>8,} customers: baseline {base:6.2f} s, fan-out {fan:6.2f} s, ratio {fan / base:4.2f}x, "
              f"fan-out peak memory {peak / 1024:7.0f} KiB")
    print_peak_ratio(peaks, "customers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
