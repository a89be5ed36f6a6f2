"""The soak: ``python -m bench.faults --soak MINUTES``.

A 20,000-customer campaign on 3 worker processes (three groups of one, so that one can be
killed alone) with, all at once for MINUTES: a kill -9 of a random worker every 5-20 s (a
replacement starts at once), one Redis restart that loses every key (a third of the way),
one PostgreSQL restart in immediate mode (two thirds of the way), and Twilio answering 5 %
of creates 500 and 5 % 429. Then the faults stop and the campaign must finish; the ledger
is checked as in every case. It restarts the shared Redis and PostgreSQL servers: run it on
a machine of its own.
"""

from __future__ import annotations

import math
import random
import time

from bench.faults.harness import (
    Scenario, finish, restart_postgres_immediately, restart_redis_losing_everything, start_postgres, start_redis,
)


def soak(fake, tmp, minutes: float, customers: int = 20_000, processes: int = 3, seed: int | None = None):
    """Soak: 20,000 customers, random kill -9, a Redis and a PostgreSQL restart, 5 % 500s and 5 % 429s."""
    duration_s = minutes * 60
    rng = random.Random(seed)
    # Paced so that the campaign is still sending when the faults end.
    rate = max(5, math.ceil(0.9 * customers / duration_s))
    s = Scenario(fake, tmp, customers=customers, SMS_RATE_LIMIT=f"{rate}/second")
    live = []
    kills = redis_restarts = postgres_restarts = 0
    problems = []
    try:
        live = [s.start_workers() for _ in range(processes)]
        fake.set_error_rates(rate_429=0.05, rate_500=0.05)
        s.launch()
        began = time.monotonic()
        next_kill = began + rng.uniform(5, 20)
        redis_at, postgres_at = began + duration_s / 3, began + 2 * duration_s / 3
        while time.monotonic() - began < duration_s:
            now = time.monotonic()
            if now >= next_kill:
                victim = rng.choice(live)
                s.kill9(victim)
                live.remove(victim)
                live.append(s.start_workers())
                kills += 1
                next_kill = now + rng.uniform(5, 20)
            if redis_at is not None and now >= redis_at:
                redis_at = None
                try:
                    restart_redis_losing_everything()
                    redis_restarts += 1
                except Exception as exc:  # noqa: BLE001 - reported, and the server is started again below
                    problems.append(f"Redis restart: {type(exc).__name__}: {exc}")
                finally:
                    start_redis()
            if postgres_at is not None and now >= postgres_at:
                postgres_at = None
                try:
                    restart_postgres_immediately()
                    postgres_restarts += 1
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"PostgreSQL restart: {type(exc).__name__}: {exc}")
                finally:
                    start_postgres()
            for group in list(live):  # a worker that died by itself is replaced too (and reported)
                if not group.alive():
                    problems.append(f"a worker group exited by itself (code {group.proc.returncode})")
                    live.remove(group)
                    live.append(s.start_workers())
            time.sleep(0.2)
        fake.set_error_rates()
        verdict = finish(s, f"soak {minutes:g} min, {customers:,} customers", max(600, 2 * duration_s))
        verdict.notes.append(
            f"survived {kills} kill -9, {redis_restarts} Redis restart (all keys lost), {postgres_restarts} PostgreSQL "
            f"restart; rate {rate}/second; campaign_restarted events {s.events('campaign_restarted')}")
        if problems:
            verdict.notes += problems
        if redis_restarts != 1 or postgres_restarts != 1:
            verdict.expected_failures_ok = False
            verdict.notes.append("the soak did not restart Redis and PostgreSQL once each")
        return verdict
    finally:
        fake.set_error_rates()
        start_redis()
        start_postgres()
        s.stop()
