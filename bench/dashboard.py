"""The dashboard's speed: ``python -m bench.dashboard`` (PostgreSQL at ``TEST_POSTGRES_URL``).

Builds a campaign of 1,000,000 message rows (``INSERT ... SELECT generate_series``: 94 %
sent over the last 6 hours, 3 % failed with Twilio codes, 2 % skipped, 1 % pending, a
tenth of the sent ones delivered) and 999 more campaigns with their analytics, runs the
workers' analytics recompute once (which also fills ``SendsPerMinute``, timed apart: the
workers' cost, not the page's), then times through the Flask test client, signed in, the
campaign page, the list page (the newest 200 of the 1,000 campaigns) and a route doing
``SELECT 1`` through the same stack (webguard, the database slot, a connection per
request), ``--rounds`` times each, interleaved; prints the medians.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

from bench.common import POSTGRES_URL, REDIS_URL, reset_database

os.environ.setdefault("BROKER", "stub")
os.environ.setdefault("QUIET_HOURS", "off")

MESSAGES = 1_000_000
CAMPAIGNS = 1_000
TARGET_MS = 300.0


def seed(database) -> int:
    from models import Campaign, CampaignStatus, utcnow

    now = utcnow()
    campaign = Campaign.create(name="A million", template="Hi {first_name}: {short_url}", status=CampaignStatus.SENDING,
                               started_at=now, fanout_done_at=now, created_at=now)
    database.execute_sql(
        """
        INSERT INTO message (campaign_id, status, to_phone, body, encoding, segments, error_code, attempts, deferrals,
                             sent_at, twilio_sid, delivery_status, created_at, updated_at)
        SELECT %s,
               CASE WHEN i %% 100 < 94 THEN 'sent' WHEN i %% 100 < 97 THEN 'failed' WHEN i %% 100 < 99 THEN 'skipped'
                    ELSE 'pending' END,
               '+1212' || lpad((i %% 10000000)::text, 7, '0'), 'Hi there: https://x.example/q/ABCDEFGH', 'GSM-7', 1,
               CASE WHEN i %% 100 BETWEEN 94 AND 96 THEN (ARRAY['21211','21614','30003'])[1 + i %% 3]
                    WHEN i %% 100 IN (97, 98) THEN 'unsubscribed' END,
               1, 0,
               CASE WHEN i %% 100 < 94 THEN %s - (i * interval '21.6 milliseconds') END,
               CASE WHEN i %% 100 < 94 THEN 'SM' || md5(i::text) END,
               CASE WHEN i %% 100 < 94 AND i %% 10 = 0 THEN 'delivered' END,
               %s, %s
        FROM generate_series(1, %s) AS i
        """,
        (campaign.id, now, now, now, MESSAGES),
    )
    database.execute_sql(
        "INSERT INTO campaign (name, template, status, created_at) "
        "SELECT 'Campaign ' || i, 'Hi {first_name}: {short_url}', 'completed', %s FROM generate_series(1, %s) AS i",
        (now, CAMPAIGNS - 1),
    )
    database.execute_sql(
        "INSERT INTO campaignanalytics (campaign_id, targeted, eligible, pending, sent, failed, skipped, cancelled, "
        "segments, delivered, undelivered, unique_clicks, carrier_errors, skipped_by_reason, failed_by_reason, updated_at) "
        "SELECT id, 5000, 4900, 0, 4800, 100, 100, 0, 4800, 4500, 300, 700, '{}', '{}', '{}', %s FROM campaign "
        "WHERE id <> %s", (now, campaign.id))
    return campaign.id


def timed(client, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    from werkzeug.security import generate_password_hash

    import analytics
    from models import database
    from settings import Secret, Settings
    from web import create_app

    db = reset_database(POSTGRES_URL)
    started = time.perf_counter()
    campaign_id = seed(db)
    db.execute_sql("VACUUM ANALYZE message")
    db.execute_sql("VACUUM ANALYZE campaign")
    print(f"seeded {MESSAGES:,} messages in campaign {campaign_id} and {CAMPAIGNS - 1:,} more campaigns "
          f"in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    analytics.recompute_analytics(campaign_id)  # the workers' recompute: analytics and SendsPerMinute
    first = time.perf_counter() - started
    started = time.perf_counter()
    analytics.recompute_analytics(campaign_id)
    print(f"workers' analytics recompute of the campaign (with SendsPerMinute): first {first:.2f} s "
          f"(fills every minute), next {time.perf_counter() - started:.2f} s")
    db.close()

    settings = Settings(database_url=POSTGRES_URL, redis_url=REDIS_URL, quiet_hours="off", dashboard_secret_key=Secret("b" * 40),
                        dashboard_users="bench:" + generate_password_hash("bench", method="pbkdf2"))
    app = create_app(settings)

    @app.get("/bench/select-1")
    def select_one():
        database.execute_sql("SELECT 1").fetchone()
        return "1"

    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    page = client.get("/dashboard/sign-in").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/dashboard/sign-in", data={"csrf_token": token, "name": "bench", "password": "bench"}).status_code == 302
    paths = {"SELECT 1": "/bench/select-1", "campaign page": f"/dashboard/campaigns/{campaign_id}", "list page": "/dashboard/"}
    for path in paths.values():
        timed(client, path)  # warm: templates compiled, statements planned
    times = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, path in paths.items():
            times[name].append(timed(client, path))
    base = statistics.median(times["SELECT 1"])
    from campaigns import status_report

    with database.connection_context():
        started = time.perf_counter()
        for _ in range(3):
            status_report(campaign_id, settings=settings)
        rows_ms = (time.perf_counter() - started) * 1000 / 3
    print(f"for reference, campaigns.status_report counting the rows (what the page avoids): {rows_ms:.0f} ms a call")
    print(f"{'through the Flask test client, signed in':<44} median      p90  (of {args.rounds})")
    for name, values in times.items():
        values.sort()
        median = statistics.median(values)
        p90 = values[int(len(values) * 0.9) - 1]
        verdict = "" if name == "SELECT 1" else f"  {median / base:5.1f}x SELECT 1, {'PASS' if median < TARGET_MS else 'FAIL'} (< {TARGET_MS:.0f} ms)"
        print(f"{name:<44} {median:7.1f} ms {p90:7.1f} ms{verdict}")


if __name__ == "__main__":
    main()
