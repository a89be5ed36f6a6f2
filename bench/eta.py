"""ETA bench: is ``campaign status``'s ETA true while a real campaign runs?

    python -m bench.eta [--customers 1500] [--limit 50/second]

Runs a campaign through real workers (``dramatiq actors``, 2 processes x 8 threads, the Redis
broker, PostgreSQL, the fake Twilio over HTTP) at ``SMS_RATE_LIMIT=--limit``, samples
``campaigns.status_report`` every second, and once the last message is sent compares each
sample's ETA with the real remaining time (the last ``sent_at`` minus the sample's time).
Elapsed times count from the campaign's ``started_at``. ``TEST_POSTGRES_URL`` and
``TEST_REDIS_URL`` choose the databases.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time

import redis
from dramatiq import Message as BrokerMessage
from dramatiq.brokers.redis import RedisBroker

from bench.common import POSTGRES_URL, REDIS_URL, Workers, delete_namespace, namespace, reset_database, worker_env
from tests.fake_twilio import FakeTwilio

#: Samples this close to the end are shown but not judged in % (one second off is 100 %).
JUDGED_FROM_S = 5.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--limit", default="50/second")
    args = parser.parse_args(argv)

    import campaigns
    from models import Campaign, CampaignStatus, Message, MessageStatus, database, utcnow
    from peewee import fn
    from settings import Settings
    from tests.factories import make_campaign, make_customers

    reset_database()
    with database.connection_context():
        make_customers(args.customers)
        campaign_id = make_campaign()
    settings = Settings(sms_rate_limit=args.limit, quiet_hours="off")
    ns = namespace("bench-eta")
    with tempfile.TemporaryDirectory() as tmp, FakeTwilio() as fake:
        env = worker_env(fake, ns=ns, database_url=POSTGRES_URL, SMS_RATE_LIMIT=args.limit, METRICS_DELAY_MS="1000")
        env["dramatiq_worker_timeout"] = "100"
        workers = Workers("actors", env, f"{tmp}/workers.log")
        try:
            time.sleep(3)  # the workers boot before the campaign starts, as in production
            broker = RedisBroker(url=REDIS_URL, namespace=ns)
            broker.enqueue(BrokerMessage(queue_name="campaigns", actor_name="send_campaign",
                                         args=(campaign_id,), kwargs={}, options={}))
            broker.close()
            print(f"{args.customers:,} customers at {args.limit}, 2 worker processes x 8 threads, fake Twilio over HTTP")
            print(f"{'elapsed':>8} {'pending':>8} {'sent':>6} {'rate/s':>7} {'window':>7} {'ETA s':>6}")
            samples = []
            tick = time.monotonic()
            deadline = time.monotonic() + 30 + 5 * args.customers / max(settings_rate(args.limit), 0.1)
            while time.monotonic() < deadline:
                with database.connection_context():
                    now = utcnow()
                    report = campaigns.status_report(campaign_id, now=now, settings=settings)
                    started = Campaign.get_by_id(campaign_id).started_at
                if started is not None and report["targeted"]:
                    elapsed = (now - started).total_seconds()
                    samples.append((elapsed, now, report))
                    eta = "-" if report["eta_seconds"] is None else report["eta_seconds"]
                    print(f"{elapsed:8.1f} {report['pending']:8,} {report['sent']:6,} {report['rate_per_minute'] / 60:7.1f} "
                          f"{report['rate_window_s']:6.1f}s {eta:>6}", flush=True)
                    if report["status"] == CampaignStatus.COMPLETED or (report["pending"] == 0 and report["sent"]):
                        break
                tick += 1.0  # one sample a second, whatever a sample costs
                time.sleep(max(0.0, tick - time.monotonic()))
            with database.connection_context():
                last_sent = Message.select(fn.MAX(Message.sent_at)).where(
                    Message.campaign == campaign_id, Message.status == MessageStatus.SENT).scalar()
                sent = Message.select().where(Message.campaign == campaign_id, Message.status == MessageStatus.SENT).count()
        finally:
            workers.stop()
            delete_namespace(redis.Redis.from_url(REDIS_URL), ns)
    if not samples or last_sent is None:
        print("no samples: the campaign did not run", file=sys.stderr)
        return 1
    started = samples[0][1] - dt.timedelta(seconds=samples[0][0])
    print(f"\nsent {sent:,}; last sent {((last_sent - started).total_seconds()):.1f} s after the start")
    print(f"{'elapsed':>8} {'ETA s':>6} {'real s':>7} {'error':>8}")
    errors = []
    for elapsed, now, report in samples:
        real = (last_sent - now).total_seconds()
        if real <= 0:
            continue
        eta = report["eta_seconds"]
        error = None if eta is None else (eta - real) / real
        judged = elapsed >= 10 and real >= JUDGED_FROM_S
        if judged:
            errors.append((elapsed, error))
        shown = "-" if error is None else f"{error:+.1%}"
        print(f"{elapsed:8.1f} {'-' if eta is None else eta:>6} {real:7.1f} {shown:>8}{'' if judged else '  (not judged)'}")
    print()
    for mark in (10, 15, 20):
        at = next(((e, err) for e, err in errors if e >= mark), None)
        if at is None:
            print(f"ETA error at {mark} s: no sample")
        else:
            print(f"ETA error at {mark} s (sample at {at[0]:.1f} s): " + ("no ETA" if at[1] is None else f"{at[1]:+.1%}"))
    judged = [abs(err) for _, err in errors if err is not None]
    missing = sum(1 for _, err in errors if err is None)
    if judged:
        print(f"max |ETA error| after 10 s (samples with at least {JUDGED_FROM_S:.0f} s left): {max(judged):.1%} "
              f"over {len(judged)} samples" + (f"; {missing} without an ETA" if missing else ""))
    return 0 if judged and max(judged) <= 0.2 and not missing else 1


def settings_rate(limit: str) -> float:
    from limits import parse

    item = parse(limit)
    return item.amount / item.get_expiry()


if __name__ == "__main__":
    sys.exit(main())
