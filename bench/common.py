"""Shared parts of the benches: worker processes, a seeded database, broker inspection."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.endpoints import POSTGRES_URL, REDIS_URL  # noqa: E402  (TEST_POSTGRES_URL, TEST_REDIS_URL)
FROM_NUMBER = "+12125550100"


def namespace(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_env(fake, *, ns: str, database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BROKER="redis", REDIS_URL=REDIS_URL, DRAMATIQ_NAMESPACE=ns, DATABASE_URL=database_url,
        SMS_BACKEND="twilio", TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
        TWILIO_FROM_NUMBER=FROM_NUMBER, TWILIO_API_BASE_URL=fake.base_url, TWILIO_TIMEOUT_S="10", RECONCILE_AFTER_S="30",
        METRICS_DELAY_MS="500", PYTHONUNBUFFERED="1", QUIET_HOURS="off",
    )
    env.update(extra)
    return env


class Workers:
    """``dramatiq MODULE`` in its own process group, its output in a log file."""

    def __init__(self, module: str, env: dict[str, str], log_path: str, *, processes: int = 2, threads: int = 8, extra_args=()):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", module, "--processes", str(processes), "--threads", str(threads), *extra_args],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def tail(self, n: int = 2000) -> str:
        with open(self.log_path) as f:
            return f.read()[-n:]


def reset_database(url: str = POSTGRES_URL):
    """Point the models at ``url`` with every table dropped and created anew."""
    from models import MODELS, configure_database, database
    from schema import create_schema

    db = configure_database(url)
    if not db.is_closed():
        db.close()
    with database.connection_context():
        database.drop_tables(MODELS, safe=True, cascade=True)
    create_schema()
    return db


def broker_depth(client, ns: str, queue: str) -> int:
    """Messages of ``queue`` held by the broker: queued, delayed, prefetched or unacked."""
    return client.hlen(f"{ns}:{queue}.msgs") + client.hlen(f"{ns}:{queue}.DQ.msgs")


def dead_lettered(client, ns: str, queue: str) -> int:
    return client.zcard(f"{ns}:{queue}.XQ")


def delete_namespace(client, ns: str) -> None:
    keys = list(client.scan_iter(f"{ns}*", count=1000))
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def sliding_window_max(timestamps: list[float], window_s: float) -> int:
    """The most events in any half-open window of ``window_s`` (checked at every event)."""
    ts = sorted(timestamps)
    start, best = 0, 0
    for end, t in enumerate(ts):
        while ts[start] <= t - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def utilisation(timestamps: list[float], limit: int, window_s: float) -> tuple[float, float, float]:
    """Shares of the limit used while a backlog existed (from the first send to the last):
    (sending rate / limit rate, mean of full tumbling windows, worst full window)."""
    ts = sorted(timestamps)
    if len(ts) < 2:
        return 1.0, 1.0, 1.0
    rate = (len(ts) - 1) / (ts[-1] - ts[0]) / (limit / window_s)
    counts, t = [], ts[0]
    while t + window_s <= ts[-1]:
        counts.append(sum(1 for x in ts if t <= x < t + window_s))
        t += window_s
    if not counts:
        return rate, 1.0, 1.0
    return rate, sum(counts) / len(counts) / limit, min(counts) / limit


def median(values):
    return statistics.median(values) if values else float("nan")


def spread_over_threads(n: int, threads: int, work) -> None:
    """Call ``work()`` ``n`` times in all, from ``threads`` threads at once; return when done."""
    left = [n]
    lock = threading.Lock()

    def run() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            work()

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def print_peak_ratio(peaks: dict[int, int], unit: str) -> None:
    """The ratio of the peak memory of the largest size to the smallest's (memory that
    stays flat as the size grows gives about 1)."""
    if len(peaks) > 1:
        small, large = min(peaks), max(peaks)
        print(f"peak memory {large:,} / {small:,} {unit}: {peaks[large] / peaks[small]:.2f}")


def seed_rendered_campaign(n: int) -> tuple[int, list[int]]:
    """A fresh database with ``n`` customers and one campaign fanned out (its rows rendered,
    its dispatcher's token set, so that only the sends are measured): (campaign id, the
    pending message ids)."""
    import fanout
    from models import Campaign, Message, MessageStatus, database
    from tests.factories import make_campaign, make_customers

    reset_database()
    with database.connection_context():
        make_customers(n)
        campaign_id = make_campaign()
        fanout.fan_out(campaign_id, short_url_base="https://x.test/q")
        Campaign.update(dispatch_token="bench").where(Campaign.id == campaign_id).execute()
        ids = [m.id for m in Message.select(Message.id).where(Message.status == MessageStatus.PENDING)]
    return campaign_id, ids
