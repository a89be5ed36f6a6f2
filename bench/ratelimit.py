"""Rate-limit bench: this project's RateLimit middleware against the naive use of
Dramatiq's WindowRateLimiter (raise RateLimitExceeded, let Retries back off), on the same
load, in the same run.

    python -m bench.ratelimit [--messages 300] [--limit 20] [--window 2]

Both runs use two ``dramatiq`` worker processes of 8 threads on the real Redis broker and
the real twilio client sending to the fake Twilio API (tests/fake_twilio.py), whose accept
timestamps are the ground truth. Prints exactness (most sends in any sliding window),
utilisation while a backlog existed, deferrals per message, losses and wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from bench.common import (
    REDIS_URL, Workers, dead_lettered, delete_namespace, namespace, sliding_window_max, utilisation, wait_until, worker_env,
)
from tests.fake_twilio import FakeTwilio


def run_project(fake: FakeTwilio, args, tmp: str) -> dict:
    from models import Campaign, CampaignStatus, Message as Row, MessageStatus, configure_database, database
    from schema import create_schema
    from tests.factories import make_campaign, make_customers

    database_url = f"sqlite:///{tmp}/bench-ratelimit.db"
    configure_database(database_url)
    create_schema()
    with database.connection_context():
        make_customers(args.messages)
        campaign_id = make_campaign()
    ns = namespace("bench-rl")
    env = worker_env(fake, ns=ns, database_url=database_url, SMS_RATE_LIMIT=f"{args.limit} per {args.window} seconds")
    workers = Workers("actors", env, f"{tmp}/project-workers.log", extra_args=args.worker_args)
    client = redis.Redis.from_url(REDIS_URL)
    broker = RedisBroker(url=REDIS_URL, namespace=ns)
    try:
        time.sleep(args.warmup_s)
        started = time.monotonic()
        broker.enqueue(Message(queue_name="campaigns", actor_name="send_campaign", args=(campaign_id,), kwargs={}, options={}))

        def finished():
            with database.connection_context():
                return Campaign.get_by_id(campaign_id).status in CampaignStatus.FINISHED

        done = wait_until(finished, args.timeout_s, 0.2)
        wall_s = time.monotonic() - started
        with database.connection_context():
            rows = list(Row.select(Row.status, Row.deferrals))
        deferrals = [r.deferrals for r in rows if r.status == MessageStatus.SENT]
        return {
            "finished": done,
            "wall_s": wall_s,
            "timestamps": [m["accepted_at"] for m in fake.messages],
            "deferrals_mean": statistics.mean(deferrals) if deferrals else 0.0,
            "deferrals_max": max(deferrals) if deferrals else 0,
            "dead_lettered": dead_lettered(client, ns, "sms"),
            "failed": sum(1 for r in rows if r.status == MessageStatus.FAILED),
            "missing": args.messages - sum(1 for r in rows if r.status == MessageStatus.SENT),
            "log": workers.tail(),
        }
    finally:
        workers.stop()
        delete_namespace(client, ns)
        broker.close()


def run_naive(fake: FakeTwilio, args, tmp: str) -> dict:
    from tests.factories import phone_for

    ns = namespace("bench-naive")
    env = worker_env(
        fake, ns=ns, database_url="sqlite:///unused.db",
        NAIVE_LIMIT=str(args.limit), NAIVE_WINDOW_S=str(args.window),
        NAIVE_MAX_RETRIES=str(args.naive_max_retries), NAIVE_MIN_BACKOFF_MS=str(args.naive_min_backoff_ms),
    )
    workers = Workers("bench.naive_actors", env, f"{tmp}/naive-workers.log", extra_args=args.worker_args)
    client = redis.Redis.from_url(REDIS_URL)
    broker = RedisBroker(url=REDIS_URL, namespace=ns)
    try:
        time.sleep(args.warmup_s)
        started = time.monotonic()
        for i in range(args.messages):
            broker.enqueue(Message(queue_name="naive", actor_name="naive_send", args=(phone_for(i), f"Hello {i}"), kwargs={}, options={}))
        done = wait_until(lambda: len(fake.messages) + dead_lettered(client, ns, "naive") >= args.messages, args.timeout_s, 0.2)
        wall_s = time.monotonic() - started
        sent = len(fake.messages)
        return {
            "finished": done,
            "wall_s": wall_s,
            "timestamps": [m["accepted_at"] for m in fake.messages],
            "dead_lettered": dead_lettered(client, ns, "naive"),
            "missing": args.messages - sent,
        }
    finally:
        workers.stop()
        delete_namespace(client, ns)
        broker.close()


def report(name: str, result: dict, args) -> None:
    ts = result["timestamps"]
    most = sliding_window_max(ts, args.window) if ts else 0
    overall, mean_window, worst = utilisation(ts, args.limit, args.window) if ts else (0.0, 0.0, 0.0)
    print(f"\n== {name}")
    print(f"  finished within timeout : {result['finished']}")
    print(f"  sent                    : {len(ts)} of {args.messages}")
    print(f"  most sends in any {args.window}s window: {most} (limit {args.limit}) -> {'EXACT' if most <= args.limit else 'EXCEEDED'}")
    print(f"  utilisation (backlog)   : {overall:.1%} of the limit's rate; per {args.window}s window "
          f"mean {mean_window:.1%}, worst {worst:.1%}")
    if "deferrals_mean" in result:
        print(f"  deferrals per message   : mean {result['deferrals_mean']:.2f}, max {result['deferrals_max']}")
    print(f"  dead-lettered           : {result['dead_lettered']}")
    print(f"  failed                  : {result.get('failed', 'n/a')}")
    print(f"  missing (not sent)      : {result['missing']}")
    print(f"  wall time               : {result['wall_s']:.1f} s")
    result["most"], result["overall"] = most, overall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--window", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=240.0)
    parser.add_argument("--warmup-s", type=float, default=3.0, help="let the workers boot before the clock starts")
    parser.add_argument("--naive-max-retries", type=int, default=3)
    parser.add_argument("--naive-min-backoff-ms", type=int, default=1000)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--worker-timeout-ms", type=int, default=100, help="as in the Procfile")
    args = parser.parse_args(argv)
    args.worker_args = ()
    os.environ["dramatiq_worker_timeout"] = str(args.worker_timeout_ms)
    print(f"load: {args.messages} messages, limit {args.limit} per {args.window} s, 2 worker processes x 8 threads, Redis broker")
    with tempfile.TemporaryDirectory() as tmp, FakeTwilio() as fake:
        project = run_project(fake, args, tmp)
        report("this project: RateLimit middleware (moving window + reservation line)", project, args)
        fake.reset()
        if not args.skip_naive:
            naive = run_naive(fake, args, tmp)
            report(
                f"naive: dramatiq WindowRateLimiter, raise and retry (max_retries={args.naive_max_retries}, "
                f"min_backoff={args.naive_min_backoff_ms} ms)", naive, args,
            )
            print("\n== ratio (project / naive)")
            if naive["overall"]:
                print(f"  utilisation: {project['overall'] / naive['overall']:.2f}x")
            print(f"  wall time  : {project['wall_s'] / naive['wall_s']:.2f}x "
                  f"(naive finished={naive['finished']}, lost {naive['dead_lettered']} to the dead-letter queue)")
    ok = project["most"] <= args.limit and project["dead_lettered"] == 0 and project["missing"] == 0
    if not ok:
        print(project["log"], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
