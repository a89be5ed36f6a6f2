"""Throughput bench (issue 18): ``send_sms`` against a fake Twilio that answers in 200 or
400 ms, one dyno and four dynos on one campaign, this design beside today's in one run.

    python -m bench.throughput [--threads 64] [--skip-today] [--skip-default-cap]

A "dyno" is one ``dramatiq actors --processes 2 --threads T`` command; four dynos are four
such commands sharing the namespace, the database and the limit. Today's design is the
Procfile's until issue 18: 2 processes x 8 threads per dyno. Rates are measured where Twilio
counts, from the fake's own receipt times of the accepted creates (first to last), and so
is the most in any 1 s window. While each run lasts, every worker process's RSS and its TCP
connections to PostgreSQL are sampled from ``/proc`` (the peaks are printed).

The fake Twilio serves from one event loop (``FakeTwilio(server="async")``); what it
sustains alone is measured first, with a load of raw keep-alive clients in two processes.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time

import redis

from bench.common import POSTGRES_URL, REDIS_URL, Workers, delete_namespace, namespace, seed_rendered_campaign, sliding_window_max, wait_until, worker_env
from bench.send_path import enqueue_all
from tests.fake_twilio import FakeTwilio

# --------------------------------------------------------------- the fake, alone


async def _client_load(host: str, port: int, path: str, auth: str, conns: int, seconds: float, out) -> None:
    body = b"To=%2B15550100001&From=%2B12125550100&Body=capacity"
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n"
               f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    done = 0
    stop_at = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            await reader.readexactly(length)
            done += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    out.put(done)


def _client_process(host, port, path, auth, conns, seconds, out) -> None:
    asyncio.run(_client_load(host, port, path, auth, conns, seconds, out))


def fake_capacity(server: str, *, latency_s: float, conns: int = 200, seconds: float = 4.0) -> float:
    """Creates a second the fake answers alone, at ``latency_s``, with ``conns`` keep-alive
    clients in two processes."""
    import base64

    ctx = multiprocessing.get_context("spawn")
    with FakeTwilio(server=server, latency_s=latency_s) as fake:
        port = int(fake.base_url.rsplit(":", 1)[1])
        path = f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
        auth = "Basic " + base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
        out = ctx.Queue()
        procs = [ctx.Process(target=_client_process, args=("127.0.0.1", port, path, auth, conns // 2, seconds, out))
                 for _ in range(2)]
        for p in procs:
            p.start()
        total = sum(out.get(timeout=seconds + 60) for _ in procs)
        for p in procs:
            p.join(10)
        accepted = [r["at"] for r in fake.requests if r["outcome"] == "accepted"]
    return (len(accepted) - 1) / (max(accepted) - min(accepted)) if len(accepted) > 1 else float(total)

# ------------------------------------------------------------- worker processes


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def _postgres_inodes(port: int = 5432) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # established
                        inodes.add(fields[9])
        except OSError:
            pass
    return inodes


def _connections(pid: int, inodes: set[str]) -> int:
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
    except OSError:
        pass
    return count


def _machine_idle_s() -> tuple[float, float]:
    """(all CPU seconds, idle CPU seconds) of the machine since boot, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return sum(ticks[:8]) / tick, (ticks[3] + ticks[4]) / tick  # idle + iowait


def _service_pids(names: tuple[str, ...] = ("redis-server", "postgres")) -> dict[int, str]:
    """The processes of the local Redis and PostgreSQL servers (PostgreSQL's backends come
    and go with their connections, so they are looked for at every sample)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name in names:
                found[int(entry)] = name
    return found


class Sampler:
    """Peaks of RSS (MB) and PostgreSQL connections over the worker processes of ``groups``,
    their CPU, and the CPU of the local Redis and PostgreSQL servers over the same time."""

    def __init__(self, groups: list[Workers], interval_s: float = 0.5) -> None:
        self.groups = groups
        self.interval_s = interval_s
        self.rss_mb = 0.0
        self.connections = 0
        self.cpu_s: dict[int, float] = {}  # worker pid -> its CPU time (user + system) last seen
        self._service_start: dict[int, float] = {}  # server pid -> its CPU time when first seen
        self._service_last: dict[int, tuple[str, float]] = {}  # server pid -> (name, CPU time last seen)
        self._machine_start = self._machine_end = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._machine_start = _machine_idle_s()
        self._sample_services(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample_services()
        self._machine_end = _machine_idle_s()

    def _sample_services(self, first: bool = False) -> None:
        for pid, name in _service_pids().items():
            cpu_s = _cpu_s(pid)
            self._service_start.setdefault(pid, cpu_s if first else 0.0)  # a later one started in the run
            self._service_last[pid] = (name, cpu_s)

    def service_cpu_s(self, name: str) -> float:
        """CPU seconds the ``name`` server processes spent while sampled (a backend that
        ended between two samples is missed for its last half second)."""
        return sum(cpu - self._service_start[pid] for pid, (n, cpu) in self._service_last.items() if n == name)

    @property
    def machine_idle(self) -> float:
        """The share of the machine's CPU left idle during the run."""
        total = self._machine_end[0] - self._machine_start[0]
        return (self._machine_end[1] - self._machine_start[1]) / total if total > 0 else float("nan")

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            inodes = _postgres_inodes()
            for group in self.groups:
                for pid in _children(group.proc.pid):
                    self.rss_mb = max(self.rss_mb, _rss_mb(pid))
                    self.connections = max(self.connections, _connections(pid, inodes))
                    self.cpu_s[pid] = _cpu_s(pid)
            self._sample_services()

# ------------------------------------------------------------------------ runs


class Result:
    def __init__(self, rate: float, max_1s: int, rss_mb: float, connections: int, n: int, told: str | None,
                 worker_cpu_ms: float, fake_cpu_ms: float, redis_cpu_ms: float = 0.0, postgres_cpu_ms: float = 0.0,
                 machine_idle: float = float("nan")) -> None:
        self.rate, self.max_1s, self.rss_mb, self.connections, self.n, self.told = rate, max_1s, rss_mb, connections, n, told
        #: CPU time per message of the worker processes, and of this process (the fake).
        self.worker_cpu_ms, self.fake_cpu_ms = worker_cpu_ms, fake_cpu_ms
        #: CPU time per message of the local Redis and PostgreSQL servers, and the share of
        #: the machine's CPU left idle, over the run.
        self.redis_cpu_ms, self.postgres_cpu_ms, self.machine_idle = redis_cpu_ms, postgres_cpu_ms, machine_idle


def run(fake, tmp: str, *, n: int, latency_s: float, dynos: int, threads: int, rate_limit: str = "1000000/second",
        max_concurrent: int = 10_000, label: str = "run") -> Result:
    """Send ``n`` messages of one campaign through ``dynos`` worker commands."""
    from models import Message, MessageStatus, database

    campaign_id, ids = seed_rendered_campaign(n)
    ns = namespace("bench-tp")
    client = redis.Redis.from_url(REDIS_URL)
    client.set(f"{ns}:ratelimit:epoch", 0)  # a Redis that has served the limiter for long
    client.set(f"{ns}:twilio-permits:epoch", 0)
    enqueue_all(ns, "sms", "send_sms", ((i,) for i in ids))
    fake.reset()
    fake.latency_s = latency_s
    env = worker_env(fake, ns=ns, database_url=POSTGRES_URL, SMS_RATE_LIMIT=rate_limit, TWILIO_TIMEOUT_S="5",
                     SWEEP_INTERVAL_S="3600", METRICS_DELAY_MS="1000", TWILIO_MAX_CONCURRENT=str(max_concurrent))
    env["dramatiq_worker_timeout"] = "100"
    cpu_before = time.process_time()
    groups = [Workers("actors", env, f"{tmp}/{label}-{d}.log", processes=2, threads=threads) for d in range(dynos)]
    try:
        with Sampler(groups) as sampler:
            def done():
                if not all(group.alive() for group in groups):
                    raise RuntimeError(f"{label}: a worker group exited: {groups[0].tail(600)}")
                with database.connection_context():
                    return Message.select().where(Message.status == MessageStatus.SENT).count() >= len(ids)
            if not wait_until(done, 900, 0.5):
                print(groups[0].tail(), file=sys.stderr)
                raise RuntimeError(f"{label} did not finish")
        accepted = [r["at"] for r in fake.requests if r["outcome"] == "accepted"]
        rate = (len(accepted) - 1) / (max(accepted) - min(accepted))
        told = None
        for group in groups:
            with open(group.log_path) as f:
                found = re.search(r"cannot be reached: .*", f.read())
            if found:
                told = found.group(0)
                break
        fake_cpu_ms = (time.process_time() - cpu_before) * 1000 / len(ids)
        return Result(rate, sliding_window_max(accepted, 1.0), sampler.rss_mb, sampler.connections, len(ids), told,
                      sum(sampler.cpu_s.values()) * 1000 / len(ids), fake_cpu_ms,
                      sampler.service_cpu_s("redis-server") * 1000 / len(ids),
                      sampler.service_cpu_s("postgres") * 1000 / len(ids), sampler.machine_idle)
    finally:
        for group in groups:
            group.stop()
        delete_namespace(client, ns)


def measure_jitter() -> str:
    """Speed line 3 of issue 18 (the limit at the receiver under 0-200 ms of jitter) belongs
    to the rate limiter's bench (``bench.ratelimit``); this hook prints its line once that
    bench provides it."""
    return "jitter 0-200 ms at 20 per 2 s: not measured here (see bench.ratelimit)"


def main(argv=None) -> int:
    # A SIGTERM (timeout, Ctrl-C's cousin) unwinds, so that the worker groups are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=96, help="threads per worker process, one dyno")
    parser.add_argument("--dyno-threads", type=int, default=48, help="threads per worker process, four dynos")
    parser.add_argument("--seconds", type=float, default=12.0, help="about how long each run of this design lasts")
    parser.add_argument("--skip-today", action="store_true", help="leave out today's design")
    parser.add_argument("--skip-default-cap", action="store_true", help="leave out four dynos at the default cap")
    parser.add_argument("--only", choices=["fake", "one", "four"], help="run one part only")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    if args.only in (None, "fake"):
        for server in ("async", "threads"):
            for latency_s in (0.0, 0.2):
                rate = fake_capacity(server, latency_s=latency_s, conns=400 if latency_s else 100)
                print(f"fake Twilio alone ({server} server, {latency_s * 1000:.0f} ms, "
                      f"{400 if latency_s else 100} keep-alive clients): {rate:.0f} creates/s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FakeTwilio(server="async") as fake:
        def both(name, new_kwargs, today_kwargs, expected_new, expected_today):
            new = run(fake, tmp, n=int(expected_new * args.seconds), label="new", **new_kwargs)
            today = None if args.skip_today else run(fake, tmp, n=int(expected_today * args.seconds), label="today",
                                                     **today_kwargs)
            rows.append((name, new, today))
            return new

        if args.only in (None, "one"):
            for latency_s, expected in ((0.2, 500), (0.4, 250)):
                new = both(f"one dyno at {latency_s * 1000:.0f} ms",
                           dict(latency_s=latency_s, dynos=1, threads=args.threads, max_concurrent=1000),
                           dict(latency_s=latency_s, dynos=1, threads=8), expected, 16 / latency_s)
                print(f"one dyno at {latency_s * 1000:.0f} ms: {new.rate:.0f} msg/s", flush=True)
        if args.only in (None, "four"):
            four = both("four dynos at 200 ms, limit 1000/s",
                        dict(latency_s=0.2, dynos=4, threads=args.dyno_threads, rate_limit="1000/second",
                             max_concurrent=400),
                        dict(latency_s=0.2, dynos=4, threads=8, rate_limit="1000/second"), 1000, 320)
            print(f"four dynos at 200 ms, limit 1000/s: {four.rate:.0f} msg/s, max in a 1 s window {four.max_1s}", flush=True)
            print(f"four dynos, CPU ms per message: workers {four.worker_cpu_ms:.2f}, fake Twilio {four.fake_cpu_ms:.2f}, "
                  f"Redis {four.redis_cpu_ms:.2f}, PostgreSQL {four.postgres_cpu_ms:.2f}; "
                  f"machine idle {four.machine_idle:.0%} of {os.cpu_count()} CPUs", flush=True)
            if not args.skip_default_cap:
                capped = run(fake, tmp, n=int(500 * args.seconds), latency_s=0.2, dynos=4, threads=args.dyno_threads,
                             rate_limit="1000/second", max_concurrent=100, label="default-cap")
                rows.append(("four dynos, 1000/s, default cap 100", capped, None))
                print(f"four dynos at 200 ms, limit 1000/s, TWILIO_MAX_CONCURRENT=100: {capped.rate:.0f} msg/s; "
                      f"the workers said: {capped.told or '(nothing)'}", flush=True)
    print(measure_jitter())
    print()
    print(f"{'msg/s (at the fake)':40} {'this design':>12} {'today (x8)':>11} {'max/1 s':>8} {'RSS MB':>7} {'DB conns':>8}"
          f" {'worker CPU':>10} {'fake CPU':>9}")
    print(f"{'':40} {'':12} {'':11} {'':8} {'(per process, peak)':>16} {'(ms per message)':>20}")
    for name, new, today in rows:
        for label, r, rate in ((name, new, f"{new.rate:12.0f} {today.rate if today else float('nan'):11.0f}"),
                               ("  today's design", today, f"{'':12} {today.rate if today else 0:11.0f}")):
            if r is None:
                continue
            print(f"{label:40} {rate} {r.max_1s:8d} {r.rss_mb:7.0f} {r.connections:8d} {r.worker_cpu_ms:10.2f} {r.fake_cpu_ms:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
