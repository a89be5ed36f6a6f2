"""Send-path bench: the project's ``send_sms`` against a bare one-insert Dramatiq actor.

    python -m bench.send_path [--messages 20000] [--slow-messages 800]

Both run as two ``dramatiq`` worker processes of 8 threads on the Redis broker and
PostgreSQL, in the same run. Throughput is measured from the rows' own timestamps (first to
last), so worker boot time does not count.
 (a) bare actor: one INSERT per message.
 (b) ``send_sms`` with the rate limit out of the way and an SMS service that answers at
     once (SMS_BACKEND=null): claim, slot, send, record. The workers run with the
     production settings otherwise (the Procfile's worker timeout, the default metrics delay).
 (c) ``send_sms`` with the fake Twilio answering in 200 ms over HTTP: the ideal is
     processes x threads / 0.2 s = 80 messages a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import redis
from dramatiq import Message as BrokerMessage
from dramatiq.brokers.redis import RedisBroker

from bench.common import POSTGRES_URL, REDIS_URL, Workers, delete_namespace, namespace, seed_rendered_campaign, wait_until, worker_env
from settings import Settings
from tests.fake_twilio import FakeTwilio


def enqueue_all(ns: str, queue: str, actor: str, args_list) -> None:
    broker = RedisBroker(url=REDIS_URL, namespace=ns)
    try:
        for args in args_list:
            broker.enqueue(BrokerMessage(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}))
    finally:
        broker.close()


def run_bare(n: int, tmp: str, fake) -> float:
    from peewee import fn

    from bench.bare_actors import BenchRow, db

    with db.connection_context():
        db.drop_tables([BenchRow], safe=True)
        db.create_tables([BenchRow])
    ns = namespace("bench-bare")
    enqueue_all(ns, "bare", "bare_insert", ((i,) for i in range(n)))
    env = worker_env(fake, ns=ns, database_url=POSTGRES_URL)
    workers = Workers("bench.bare_actors", env, f"{tmp}/bare.log")
    try:
        def done():
            with db.connection_context():
                return BenchRow.select().count() >= n
        if not wait_until(done, 300, 0.5):
            print(workers.tail(), file=sys.stderr)
            raise RuntimeError("bare run did not finish")
        with db.connection_context():
            first, last = BenchRow.select(fn.MIN(BenchRow.created_at), fn.MAX(BenchRow.created_at)).scalar(as_tuple=True)
        return (n - 1) / (last - first).total_seconds()
    finally:
        workers.stop()
        delete_namespace(redis.Redis.from_url(REDIS_URL), ns)


def run_project(n: int, tmp: str, fake, *, backend: str, latency_s: float = 0.0) -> float:
    from models import Message, MessageStatus, database
    from peewee import fn

    campaign_id, ids = seed_rendered_campaign(n)
    ns = namespace("bench-send")
    client = redis.Redis.from_url(REDIS_URL)
    # A Redis that has served the limiter and the permits for long: a new namespace would
    # otherwise be an empty Redis, which grants nothing for a window plus TWILIO_TIMEOUT_S
    # and sends every message to the line of reservations (the rate limit in the way).
    client.set(f"{ns}:ratelimit:epoch", 0)
    client.set(f"{ns}:twilio-permits:epoch", 0)
    enqueue_all(ns, "sms", "send_sms", ((i,) for i in ids))
    fake.latency_s = latency_s
    env = worker_env(fake, ns=ns, database_url=POSTGRES_URL, SMS_BACKEND=backend, SMS_RATE_LIMIT="1000000/second",
                     TWILIO_TIMEOUT_S="5", SWEEP_INTERVAL_S="3600", METRICS_DELAY_MS=str(Settings().metrics_delay_ms))
    env["dramatiq_worker_timeout"] = "100"
    workers = Workers("actors", env, f"{tmp}/project-{backend}.log")
    try:
        def done():
            with database.connection_context():
                return Message.select().where(Message.status == MessageStatus.SENT).count() >= len(ids)
        if not wait_until(done, 600, 0.5):
            print(workers.tail(), file=sys.stderr)
            raise RuntimeError("project run did not finish")
        with database.connection_context():
            first, last = (
                Message.select(fn.MIN(Message.sent_at), fn.MAX(Message.sent_at)).where(Message.status == MessageStatus.SENT)
                .scalar(as_tuple=True)
            )
        return (len(ids) - 1) / (last - first).total_seconds()
    finally:
        workers.stop()
        delete_namespace(redis.Redis.from_url(REDIS_URL), ns)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--slow-messages", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=3, help="(a) and (b) are run in turn this many times")
    args = parser.parse_args(argv)
    print(f"2 worker processes x 8 threads, Redis broker, PostgreSQL, {args.messages:,} messages, {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as tmp, FakeTwilio() as fake:
        bares, projects = [], []
        for round_no in range(1, args.rounds + 1):
            bares.append(run_bare(args.messages, tmp, fake))
            projects.append(run_project(args.messages, tmp, fake, backend="null"))
            print(f"  round {round_no}: (a) {bares[-1]:6.0f} msg/s  (b) {projects[-1]:6.0f} msg/s  = {projects[-1] / bares[-1]:.0%}")
        bare, project = statistics.median(bares), statistics.median(projects)
        ratio = statistics.median(p / b for p, b in zip(projects, bares))
        print(f"  (a) bare actor, one INSERT            : {bare:8.0f} msg/s (median)")
        print(f"  (b) send_sms, instant SMS service     : {project:8.0f} msg/s (median)  = {ratio:.0%} of (a), median of the rounds")
        slow = run_project(args.slow_messages, tmp, fake, backend="twilio", latency_s=0.2)
        ideal = 2 * 8 / 0.2
        print(f"  (c) send_sms, Twilio answering in 200 ms: {slow:6.1f} msg/s  = {slow / ideal:.0%} of the ideal {ideal:.0f}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
