"""A 100,000-customer campaign at 10/minute: the fan-out's memory, and the broker's depth.

    python -m bench.pacing [--customers 100000] [--observe-s 60]

1. The fan-out (recording every customer's outcome row) runs in this process under
   tracemalloc for 10,000 and then 100,000 customers on PostgreSQL: time and peak memory.
2. The same campaign runs on two ``dramatiq actors`` worker processes (Redis broker,
   SMS_RATE_LIMIT=10/minute, fake Twilio). The broker's depth for the ``sms`` queue
   (queued + delayed + prefetched + unacked messages) is sampled while the fan-out runs and
   for ``--observe-s`` seconds after it; the bound is the dispatcher's in-flight cap
   (three rate-limit windows: 30 messages at 10/minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc

import redis
from dramatiq import Message as BrokerMessage
from dramatiq.brokers.redis import RedisBroker

from bench.common import POSTGRES_URL, REDIS_URL, Workers, broker_depth, delete_namespace, namespace, reset_database, worker_env
from tests.fake_twilio import FakeTwilio


def peak_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def measure_fan_out(campaign_id: int, short_url_base: str) -> tuple[float, int, int]:
    import fanout

    tracemalloc.start()
    started = time.perf_counter()
    result = fanout.fan_out(campaign_id, short_url_base=short_url_base, batch_size=500)
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak, result.recorded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--observe-s", type=float, default=60.0)
    args = parser.parse_args(argv)

    from models import Message, MessageStatus, database
    from tests.factories import make_campaign, make_customers

    db = reset_database()
    database.connect()

    print("== fan-out on PostgreSQL, in process, batches of 500 (tracemalloc peak)")
    small = min(10_000, args.customers)
    make_customers(small)
    elapsed, peak, created = measure_fan_out(make_campaign(), "https://x.test/q")
    print(f"  {small:>7,} customers: {elapsed:6.2f} s, peak {peak / 1024:8.0f} KiB, {created:,} rows")
    if args.customers > small:
        make_customers(args.customers - small)
    big_campaign = make_campaign()
    elapsed, peak_big, created = measure_fan_out(big_campaign, "https://x.test/q")
    print(f"  {args.customers:>7,} customers: {elapsed:6.2f} s, peak {peak_big / 1024:8.0f} KiB, {created:,} rows")
    print(f"  peak memory ratio {args.customers:,} / {small:,}: {peak_big / peak:.2f}")

    campaign_id = make_campaign(name="paced")
    db.close()
    ns = namespace("bench-pacing")
    client = redis.Redis.from_url(REDIS_URL)
    with FakeTwilio() as fake, tempfile.TemporaryDirectory() as tmp:
        os.environ["dramatiq_worker_timeout"] = "100"
        env = worker_env(fake, ns=ns, database_url=POSTGRES_URL, SMS_RATE_LIMIT="10/minute")
        workers = Workers("actors", env, f"{tmp}/workers.log")
        broker = RedisBroker(url=REDIS_URL, namespace=ns)
        try:
            time.sleep(3)
            broker.enqueue(BrokerMessage(queue_name="campaigns", actor_name="send_campaign", args=(campaign_id,), kwargs={}, options={}))
            started = time.monotonic()
            max_depth, fanout_done_at, samples = 0, None, 0
            while True:
                depth = broker_depth(client, ns, "sms")
                max_depth = max(max_depth, depth)
                samples += 1
                if fanout_done_at is None:
                    with database.connection_context():
                        rows = Message.select().where(Message.campaign == campaign_id).count()
                    if rows >= args.customers:
                        fanout_done_at = time.monotonic()
                        print(f"\n== paced run: fan-out recorded {rows:,} rows in {fanout_done_at - started:.1f} s (in the worker)")
                elif time.monotonic() - fanout_done_at > args.observe_s:
                    break
                if time.monotonic() - started > 900:
                    print("  fan-out did not finish in 900 s")
                    break
                time.sleep(0.5)
            with database.connection_context():
                sent = Message.select().where(Message.campaign == campaign_id, Message.status == MessageStatus.SENT).count()
                queued = Message.select().where(Message.campaign == campaign_id, Message.queued_at.is_null(False)).count()
            rss = [peak_rss_kib(pid) for pid in children(workers.proc.pid)]
            print(f"  sms queue + delay queue depth: max {max_depth} over {samples} samples "
                  f"(bound: 3 windows = 30 messages); sent {sent}, ever enqueued {queued} of {args.customers:,}")
            print(f"  worker processes' peak RSS: {', '.join(f'{r / 1024:.0f} MiB' for r in rss) or 'n/a'}")
            ok = max_depth <= 30 + 2
        finally:
            workers.stop()
            delete_namespace(client, ns)
            broker.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
