"""The naive baseline: Dramatiq's own WindowRateLimiter inside the actor, raise and retry.

Run as ``dramatiq bench.naive_actors``; configured by the environment the bench sets.
"""

from __future__ import annotations

import os

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits import WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

client = redis.Redis.from_url(os.environ["REDIS_URL"])
broker = RedisBroker(client=client, namespace=os.environ["DRAMATIQ_NAMESPACE"])
dramatiq.set_broker(broker)

LIMITER = WindowRateLimiter(
    RedisBackend(client=client), os.environ["DRAMATIQ_NAMESPACE"] + ":naive",
    limit=int(os.environ["NAIVE_LIMIT"]), window=int(os.environ["NAIVE_WINDOW_S"]),
)
twilio = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"], http_client=TwilioHttpClient(timeout=10))
twilio.api.base_url = os.environ["TWILIO_API_BASE_URL"]
twilio.edge = twilio.region = None


@dramatiq.actor(
    queue_name="naive",
    max_retries=int(os.environ["NAIVE_MAX_RETRIES"]),
    min_backoff=int(os.environ["NAIVE_MIN_BACKOFF_MS"]),
)
def naive_send(to: str, body: str) -> None:
    with LIMITER.acquire():
        twilio.messages.create(to=to, from_=os.environ["TWILIO_FROM_NUMBER"], body=body)
