"""The fault-injection harness: a campaign on real parts, a fault, and the ledger.

Real parts: ``dramatiq actors`` worker processes on the Redis broker, PostgreSQL, and the
real twilio client talking HTTP to the fake Twilio API in this process. After the fault,
``Scenario.verify()`` checks that every eligible customer has exactly one message accepted
by the fake and exactly one sent row carrying that message's SID, that no ineligible
customer got anything, and that the campaign's analytics equal the database's counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field

import redis
from dramatiq import Message as BrokerMessage
from dramatiq.brokers.redis import RedisBroker

from bench.common import POSTGRES_URL, REDIS_URL, Workers, delete_namespace, namespace, reset_database, worker_env

#: Worker settings that make recovery fast enough to watch: a killed worker's messages
#: come back after 3 s, stale rows after 8 s, the sweeper looks every 2 s.
FAST_RECOVERY = dict(
    SMS_RATE_LIMIT="100/second",
    TWILIO_TIMEOUT_S="2",
    RECONCILE_AFTER_S="4",
    REQUEUE_AFTER_S="8",
    SWEEP_INTERVAL_S="2",
    SWEEP_STALE_AFTER_S="6",
    SMS_MIN_BACKOFF_MS="500",
    SMS_MAX_RETRIES="20",
    DRAMATIQ_HEARTBEAT_TIMEOUT_MS="3000",
    DRAMATIQ_MAINTENANCE_CHANCE="200000",
    METRICS_DELAY_MS="300",
)


@dataclass
class Verdict:
    case: str
    eligible: int
    lost: int
    duplicated: int
    ineligible_sent: int
    sid_mismatch: int
    analytics_match: bool
    expected_failures_ok: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost, self.duplicated, self.ineligible_sent, self.sid_mismatch) == (0, 0, 0, 0) \
            and self.analytics_match and self.expected_failures_ok

    def row(self) -> str:
        return (f"| {self.case} | {self.eligible} | {self.lost} | {self.duplicated} | {self.ineligible_sent} | "
                f"{'yes' if self.analytics_match else 'NO'} | {self.seconds:.1f} s | {'PASS' if self.ok else 'FAIL'} |")


class Scenario:
    """One campaign: customers (10% ineligible), a worker group or two, and the checks."""

    def __init__(self, fake, tmp: str, *, customers: int = 1000, expected_failures: dict[str, str] | None = None,
                 processes: int = 1, threads: int = 8, **settings: str) -> None:
        from models import database
        from tests.factories import make_campaign, make_customers, phone_for

        self.fake, self.tmp = fake, tmp
        self.db = reset_database()
        unsubscribed = set(range(0, customers, 20))
        bad = {i: "12345" for i in range(7, customers, 20)}
        with database.connection_context():
            make_customers(customers, unsubscribed=unsubscribed, bad_phones=bad)
            self.campaign_id = make_campaign()
        self.campaign_ids = [self.campaign_id]
        ineligible = unsubscribed | set(bad)
        self.eligible = {phone_for(i) for i in range(customers) if i not in ineligible}
        self.ineligible = {phone_for(i) for i in ineligible}
        self.expected_failures = expected_failures or {}
        self.ns = namespace("faults")
        self.env = worker_env(fake, ns=self.ns, database_url=POSTGRES_URL, **{**FAST_RECOVERY, **settings})
        self.env["dramatiq_worker_timeout"] = "100"
        self.processes, self.threads = processes, threads
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.groups: list[Workers] = []
        self.started = time.monotonic()

    # ------------------------------------------------------------- control
    def start_workers(self, *, extra_args=(), processes: int | None = None, **env: str) -> Workers:
        """A worker group; ``env`` adds to (or overrides) the scenario's environment for it."""
        group = Workers("actors", {**self.env, **env}, f"{self.tmp}/workers-{len(self.groups)}.log",
                        processes=processes or self.processes, threads=self.threads, extra_args=extra_args)
        self.groups.append(group)
        return group

    def kill9(self, group: Workers) -> None:
        """SIGKILL the whole group (main process and its worker processes) at once."""
        os.killpg(group.proc.pid, signal.SIGKILL)
        group.proc.wait(10)

    def add_campaign(self, **fields) -> int:
        """Another campaign over the same customers (``verify(campaign_id=)`` checks it)."""
        from models import database
        from tests.factories import make_campaign

        with database.connection_context():
            campaign_id = make_campaign(**fields)
        self.campaign_ids.append(campaign_id)
        return campaign_id

    def launch(self, campaign_id: int | None = None, *, delay_ms: int | None = None) -> None:
        """Enqueue the campaign's fan-out (``delay_ms``: as a delayed message)."""
        broker = RedisBroker(url=REDIS_URL, namespace=self.ns)
        try:
            broker.enqueue(BrokerMessage(queue_name="campaigns", actor_name="send_campaign",
                                         args=(campaign_id or self.campaign_id,), kwargs={}, options={}), delay=delay_ms)
        finally:
            broker.close()
        self.started = time.monotonic()

    def sent_count(self) -> int:
        return len(self.fake.messages)

    def wait_until(self, predicate, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return True
            except Exception:  # the database may be restarting
                pass
            time.sleep(0.2)
        return False

    def finished(self) -> bool:
        """Every campaign of the scenario is finished."""
        from models import Campaign, CampaignStatus, database

        with database.connection_context():
            return all(Campaign.get_by_id(c).status in CampaignStatus.FINISHED for c in self.campaign_ids)

    def wait_finished(self, timeout_s: float = 180) -> bool:
        return self.wait_until(self.finished, timeout_s)

    def events(self, code: str) -> int:
        """Event rows with ``code`` for the scenario's campaigns."""
        from models import Event, database

        with database.connection_context():
            return Event.select().where(Event.campaign_id.in_(self.campaign_ids), Event.code == code).count()

    def stop(self) -> None:
        for group in self.groups:
            group.stop()
        delete_namespace(self.redis, self.ns)

    def logs(self) -> str:
        return "\n".join(group.tail(1500) for group in self.groups)

    def log_text(self) -> str:
        """Every group's whole log."""
        return "\n".join(group.tail(10**9) for group in self.groups)

    # ------------------------------------------------------------- verdict
    def verify(self, case: str, campaign_id: int | None = None) -> Verdict:
        """The ledger of one campaign (the first by default). With several campaigns over the
        same customers, the fake's messages are told apart by their bodies (each carries
        its own short link) and a row's SID must be that of a message with its own body."""
        import analytics as analytics_module
        from models import Message, MessageStatus, database

        seconds = time.monotonic() - self.started
        campaign_id = campaign_id or self.campaign_id
        with database.connection_context():
            rows = list(Message.select(Message.to_phone, Message.status, Message.twilio_sid, Message.error_code, Message.body)
                        .where(Message.campaign == campaign_id))
            analytics = analytics_module.analytics_dict(campaign_id)
            counts = analytics_module.database_counts(campaign_id)
        messages = self.fake.messages
        if len(self.campaign_ids) > 1:
            bodies = {r.body for r in rows if r.body}
            messages = [m for m in messages if m["body"] in bodies]
            body_of = {m["sid"]: m["body"] for m in messages}
        accepted = Counter(m["to"] for m in messages)
        sids = {m["sid"]: m["to"] for m in messages}
        by_phone = {r.to_phone: r for r in rows if r.to_phone}
        to_send = self.eligible - set(self.expected_failures)
        lost = sum(1 for p in to_send if accepted[p] == 0 or by_phone.get(p) is None or by_phone[p].status != MessageStatus.SENT)
        duplicated = sum(1 for p in self.eligible if accepted[p] > 1)
        ineligible_sent = sum(1 for p in self.ineligible if accepted[p])
        sid_mismatch = sum(1 for p in to_send if p in by_phone and by_phone[p].twilio_sid
                           and sids.get(by_phone[p].twilio_sid) != p)
        sid_mismatch += sum(1 for r in rows if r.status == MessageStatus.SENT and r.twilio_sid not in sids)
        if len(self.campaign_ids) > 1:
            sid_mismatch += sum(1 for r in rows if r.twilio_sid in body_of and body_of[r.twilio_sid] != r.body)
        expected_ok = all(
            by_phone.get(p) is not None and by_phone[p].status == MessageStatus.FAILED and by_phone[p].error_code == code
            for p, code in self.expected_failures.items()
        )
        analytics_match = (
            analytics.get("sent") == counts.get("sent", 0)
            and analytics.get("failed") == counts.get("failed", 0)
            and analytics.get("skipped") == counts.get("skipped", 0)
            and analytics.get("targeted") == sum(counts.values())
        )
        return Verdict(case, len(self.eligible), lost, duplicated, ineligible_sent, sid_mismatch,
                       analytics_match, expected_ok, seconds)

    def unattributed(self) -> list[dict]:
        """The fake's messages whose body is no row's (several campaigns: a stray send)."""
        from models import Message, database

        with database.connection_context():
            bodies = {body for (body,) in Message.select(Message.body).where(Message.campaign.in_(self.campaign_ids)).tuples()}
        return [m for m in self.fake.messages if m["body"] not in bodies]


def finish(scenario: Scenario, case: str, timeout_s: float = 180) -> Verdict:
    """Wait for the campaign(s) to finish, then the ledger; logs go into the notes on a failure."""
    finished = scenario.wait_finished(timeout_s)
    verdict = scenario.verify(case)
    if not finished:
        verdict.notes.append("campaign did not finish in time")
    if not verdict.ok:
        verdict.notes.append(scenario.logs()[-3000:])
    return verdict


def restart_redis_losing_everything() -> None:
    """Shut Redis down without saving and start it again as the machine does; raises
    unless a new server (another run id) answers."""
    client = redis.Redis.from_url(REDIS_URL)
    before = client.info("server")["run_id"]
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=10)
    for _ in range(50):
        if not _port_open(6379):
            break
        time.sleep(0.1)
    start_redis()
    # A new run id means a new, empty server (it keeps nothing on disk); the workers may
    # already have written their heartbeats again, so the key count proves nothing.
    if redis.Redis.from_url(REDIS_URL).info("server")["run_id"] == before:
        raise RuntimeError("Redis did not restart")


def start_redis() -> None:
    if _port_open(6379):
        return
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379", "--save", "",
         "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
        check=True, timeout=10,
    )
    for _ in range(50):
        if _port_open(6379):
            return
        time.sleep(0.1)


def restart_postgres_immediately() -> None:
    """Restart PostgreSQL without a clean shutdown; raises unless its start time changed."""
    import psycopg2

    def started_at():
        with psycopg2.connect(POSTGRES_URL) as conn, conn.cursor() as cur:
            cur.execute("select pg_postmaster_start_time()")
            return cur.fetchone()[0]

    before = started_at()
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "immediate"],
                   check=True, capture_output=True, timeout=60)
    for _ in range(100):
        try:
            if started_at() != before:
                return
        except psycopg2.OperationalError:
            pass
        time.sleep(0.1)
    raise RuntimeError("PostgreSQL did not restart")


def start_postgres() -> None:
    if _port_open(5432):
        return
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], capture_output=True, timeout=60)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
