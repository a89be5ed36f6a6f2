"""The baseline for bench/send_path.py: a bare Dramatiq actor doing one PostgreSQL insert.

Run as ``dramatiq bench.bare_actors``; configured by the environment the bench sets.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from peewee import DateTimeField, IntegerField, Model, SQL
from playhouse.db_url import connect

from bench.common import POSTGRES_URL, REDIS_URL  # noqa: E402

broker = RedisBroker(
    client=redis.Redis.from_url(os.environ.get("REDIS_URL", REDIS_URL)),
    namespace=os.environ.get("DRAMATIQ_NAMESPACE", "bench-bare"),
)
dramatiq.set_broker(broker)
db = connect(os.environ.get("DATABASE_URL", POSTGRES_URL))


class BenchRow(Model):
    n = IntegerField()
    created_at = DateTimeField(constraints=[SQL("DEFAULT clock_timestamp()")])

    class Meta:
        database = db
        table_name = "bench_row"


@dramatiq.actor(queue_name="bare")
def bare_insert(n: int) -> None:
    """One INSERT on the thread's long-lived connection (peewee reconnects if needed)."""
    BenchRow.insert(n=n).execute()
