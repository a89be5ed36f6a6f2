"""A demo campaign, end to end, on embedded defaults.

SQLite in ``demo.db``, the console SMS backend, and the real Redis broker when a Redis
answers at ``REDIS_URL`` (an in-process stub broker otherwise), with an in-process worker.
The backend and the namespace are the demo's own whatever the environment says, so a shell
set up for production neither texts anyone nor touches a production queue.
"""

from __future__ import annotations

import os
import secrets
import time

DEMO_CUSTOMERS = [
    # first name, last name, phone, subscribed, has QR code
    ("Ada", "Lovelace", "+12125550101", True, True),
    ("Grace", "Hopper", "+12125550102", True, True),
    ("Alan", "Turing", "(212) 555-0103", True, True),
    ("Edsger", "Dijkstra", "+12125550104", True, True),
    ("Barbara", "Liskov", "+12125550105", True, True),
    ("Donald", "Knuth", "+12125550106", True, True),
    ("Frances", "Allen", "+12125550107", True, True),
    ("Ken", "Thompson", "+12125550108", True, True),
    ("Margaret", "Hamilton", "+12125550109", True, True),
    ("Çelik", "Öztürk", "+12125550110", True, True),
    ("Radia", "Perlman", "+12125550111", True, True),
    ("Dennis", "Ritchie", "+12125550112", True, True),
    ("Leslie", "Lamport", "+12125550113", False, True),
    ("John", "Backus", "+12125550114", False, True),
    ("Niklaus", "Wirth", "+12125550115", False, True),
    ("Bad", "Number", "12345", True, True),
    ("Letters", "Number", "+1555abc", True, True),
    ("No", "Phone", None, True, True),
    ("Without", "Code", "+12125550119", True, False),
    ("Zoë", "Ångström-Þórsdóttir", "+12125550120", True, True),
]
DEMO_TEMPLATE = "Hi {first_name}, your VIP pass for the spring sale is ready: {short_url}"


def new_qr_code() -> str:
    """Eight characters from an alphabet without look-alikes."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def seed_demo() -> int:
    """Create the demo customers and campaign; returns the campaign id."""
    from models import Campaign, Customer, QRCode, database

    with database.atomic():
        for first, last, phone, subscribed, has_qr in DEMO_CUSTOMERS:
            customer = Customer.create(first_name=first, last_name=last, phone=phone, sms_subscribed=subscribed)
            if has_qr:
                QRCode.create(customer=customer, code=new_qr_code())
        return Campaign.create(name="Spring sale (demo)", template=DEMO_TEMPLATE).id


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def run_demo(*, database_path: str = "demo.db", timeout_s: float = 120.0) -> dict:
    """Seed a fresh demo database, run one campaign to completion, return its analytics."""
    from settings import DEFAULT_REDIS_URL

    # Whatever the shell says (a production namespace, SMS_BACKEND=twilio), the demo texts
    # nobody and touches only a namespace of its own, deleted when it ends.
    namespace = f"campaign-sms-demo-{secrets.token_hex(4)}"
    os.environ["SMS_BACKEND"] = "console"
    os.environ["DRAMATIQ_NAMESPACE"] = namespace
    os.environ.setdefault("SMS_RATE_LIMIT", "10/second")
    os.environ.setdefault("QUIET_HOURS", "off")  # the demo runs at any hour
    os.environ["DATABASE_URL"] = f"sqlite:///{database_path}"
    if "BROKER" not in os.environ:
        os.environ["BROKER"] = "redis" if redis_answers(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)) else "stub"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(database_path + suffix):
            os.remove(database_path + suffix)

    from dramatiq import Worker

    import actors
    import analytics
    from models import Campaign, CampaignStatus, connection
    from schema import create_schema

    create_schema()
    with connection():
        campaign_id = seed_demo()
    settings = actors.settings
    print(f"Demo: {len(DEMO_CUSTOMERS)} customers, broker={settings.broker}, database={settings.database_url}, "
          f"SMS backend={settings.sms_backend}, SMS rate limit={settings.sms_rate_limit}")
    worker = Worker(actors.broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        actors.send_campaign.send(campaign_id)
        deadline = time.monotonic() + timeout_s
        with connection():
            while Campaign.get_by_id(campaign_id).status not in CampaignStatus.FINISHED:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"campaign {campaign_id} did not finish within {timeout_s:.0f} s")
                time.sleep(0.2)
            return analytics.analytics_dict(campaign_id)
    finally:
        worker.stop()
        delete_keys(actors.broker.redis_client, namespace)


def delete_keys(client, namespace: str) -> None:
    """Remove the demo's own keys (its queues, rate-limit windows, stop keys) from Redis."""
    if client is None:  # the stub broker keeps nothing outside this process
        return
    keys = list(client.scan_iter(f"{namespace}*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


def format_analytics(data: dict) -> str:
    lines = [f"Campaign {data['campaign_id']} {data['name']!r}: {data['status']}"]
    if data.get("status_reason"):
        lines.append(f"  reason: {data['status_reason']}")
    for key in ("targeted", "eligible", "sent", "failed", "skipped", "pending", "segments"):
        if key in data:
            lines.append(f"  {key:<9} {data[key]:>6}")
    for key in ("skipped_by_reason", "failed_by_reason"):
        for reason, count in sorted(data.get(key, {}).items()):
            lines.append(f"    {key.split('_')[0]}: {reason:<20} {count:>4}")
    return "\n".join(lines)
