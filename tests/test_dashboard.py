"""The dashboard through Flask's test client (HTTPS, as behind the router): access, the
session cookie, CSRF, actions through the CLI's functions with the operator in the audit
trail, the kept counts and the per-minute series the campaign page reads (both databases),
and the operators' accounts."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from click.testing import CliRunner
from werkzeug.security import generate_password_hash

import analytics
import sends_series
from campaign_status import kept_counts, row_counts
from cli import main
from dashboard.accounts import Accounts
from errors import ConfigurationError
from models import Campaign, CampaignStatus, Event, Message, MessageStatus, SendsPerMinute, database, utcnow
from settings import Secret, Settings
from tests.endpoints import REDIS_URL
from tests.factories import make_campaign, make_customers
from web import create_app

OPERATOR, PASSWORD = "bea", "a long enough password"


def app_for(*, sign_in_throttle=None, **overrides):
    """The web app on the test's SQLite database; its sign-in throttle on the test Redis, in
    a namespace of its own (its counts expire with their window)."""
    values = dict(database_url=f"sqlite:///{database.obj.database}", quiet_hours="off", redis_url=REDIS_URL,
                  dramatiq_namespace=f"test-{uuid.uuid4().hex[:12]}",
                  dashboard_secret_key=Secret("d" * 40),
                  dashboard_users=f"{OPERATOR}:{generate_password_hash(PASSWORD, method='pbkdf2')}")
    values.update(overrides)
    settings = Settings(**values)
    settings.validate()
    return create_app(settings, sign_in_throttle=sign_in_throttle)


def https_client(app):
    client = app.test_client()
    client.environ_base["wsgi.url_scheme"] = "https"
    return client


def token_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def signed_in(app):
    client = https_client(app)
    token = token_of(client.get("/dashboard/sign-in").text)
    answer = client.post("/dashboard/sign-in?next=/dashboard/customers",
                         data={"csrf_token": token, "name": OPERATOR, "password": PASSWORD})
    assert answer.status_code == 302 and answer.headers["Location"] == "/dashboard/customers"
    return client, answer


def test_without_a_secret_key_the_dashboard_is_not_served_and_the_webhooks_are_unchanged(sqlite_db, stub_broker):
    # Given a web process without DASHBOARD_SECRET_KEY
    client = https_client(app_for(dashboard_secret_key=Secret("")))
    # When the dashboard and a webhook are asked for
    pages = [client.get(path) for path in ("/dashboard", "/dashboard/", "/dashboard/sign-in")]
    webhook = client.post("/twilio/status", data={"MessageSid": "SM1", "MessageStatus": "delivered"})
    # Then the dashboard says in one line why it is off; the webhook still wants its signature
    assert {page.status_code for page in pages} == {503}
    assert pages[0].text == "503 Service Unavailable: the dashboard is off: set DASHBOARD_SECRET_KEY (at least 32 characters) to serve it\n"
    assert webhook.status_code == 403


def test_a_short_secret_key_or_a_malformed_account_is_refused_at_start():
    # Given / When settings with a short key, or an account without a hash
    # Then each is one line naming the variable, the hash never shown
    with pytest.raises(ConfigurationError, match="DASHBOARD_SECRET_KEY must be at least 32 characters"):
        Settings.from_env({"DASHBOARD_SECRET_KEY": "short"})
    with pytest.raises(ConfigurationError, match=r"DASHBOARD_USERS=\(not shown\) must be 'name:<hash>'"):
        Settings.from_env({"DASHBOARD_USERS": "alice:plaintext"})


def test_sign_in_sets_a_secure_httponly_samesite_cookie_and_refuses_a_wrong_password(sqlite_db, stub_broker):
    # Given the dashboard
    app = app_for()
    client = https_client(app)
    token = token_of(client.get("/dashboard/sign-in").text)
    # When a wrong password, a sign-in form without its token, then the right password are sent
    wrong = client.post("/dashboard/sign-in", data={"csrf_token": token, "name": OPERATOR, "password": "nope"})
    forged = https_client(app).post("/dashboard/sign-in", data={"name": OPERATOR, "password": PASSWORD})
    _client, answer = signed_in(app)
    # Then only the last signs in, with the cookie's flags, and each is in the audit trail
    assert wrong.status_code == 401 and "wrong name or password" in wrong.text
    assert forged.status_code == 403
    cookie = answer.headers["Set-Cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/dashboard"):
        assert flag in cookie
    codes = [(e.code, e.detail) for e in Event.select().order_by(Event.id)]
    assert ("dashboard_sign_in_failed", f"failed sign-in as '{OPERATOR}'") in codes
    assert ("dashboard_sign_in", f"{OPERATOR} signed in") in codes
    assert PASSWORD not in repr(codes)


def test_sign_in_goes_back_only_to_a_page_of_the_dashboard(sqlite_db, stub_broker):
    # Given the sign-in form
    client = https_client(app_for())
    token = token_of(client.get("/dashboard/sign-in").text)
    # When it is sent with a next URL of another host
    answer = client.post("/dashboard/sign-in?next=//evil.example/dashboard",
                         data={"csrf_token": token, "name": OPERATOR, "password": PASSWORD})
    # Then the operator lands on the dashboard's home, not there
    assert answer.headers["Location"] == "/dashboard/"


def test_create_from_a_template_calls_the_clis_checks_and_records_the_operator(sqlite_db, stub_broker):
    # Given a signed-in operator
    client, _ = signed_in(app_for())
    token = token_of(client.get("/dashboard/campaigns/new").text)
    form = {"csrf_token": token, "name": "Autumn", "on_overflow": "fail", "language": "en", "smart_encoding": "on"}
    # When a template without its link, then a good one, is sent
    refused = client.post("/dashboard/campaigns", data={**form, "template": "Hi {first_name}"}, follow_redirects=True)
    created = client.post("/dashboard/campaigns", data={**form, "template": "Hi {first_name}: {short_url}"})
    # Then the first is refused in one line, as the CLI would, and the second is a draft, by them
    assert "{short_url}" in refused.text and Campaign.select().count() == 1
    campaign = Campaign.get()
    assert created.headers["Location"] == f"/dashboard/campaigns/{campaign.id}"
    assert campaign.status == CampaignStatus.DRAFT and campaign.template == "Hi {first_name}: {short_url}"
    assert Event.get(Event.code == "operator_create").detail == f"{OPERATOR}: campaign {campaign.id} created as a draft"


def test_an_action_the_state_does_not_allow_is_refused_with_the_clis_reason(sqlite_db, stub_broker):
    # Given a signed-in operator and a draft
    client, _ = signed_in(app_for())
    campaign_id = make_campaign()
    token = token_of(client.get(f"/dashboard/campaigns/{campaign_id}").text)
    # When they ask to resume it, then to pause it without the CSRF token
    resumed = client.post(f"/dashboard/campaigns/{campaign_id}/resume", data={"csrf_token": token}, follow_redirects=True)
    forged = client.post(f"/dashboard/campaigns/{campaign_id}/pause", data={"do": "pause"})
    # Then the first says why (as `campaign resume` does), the second is 403, nothing changed
    assert f"campaign {campaign_id} is a draft: nothing to resume" in resumed.text
    assert forged.status_code == 403
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.DRAFT
    assert not Event.select().where(Event.code.startswith("operator_")).exists()


def sent_rows(campaign_id: int, minutes: list[int], now: dt.datetime) -> None:
    """One sent row per entry, ``minutes[i]`` minutes before ``now``; and a failed and a
    skipped one."""
    ids = make_customers(len(minutes) + 2)
    for customer_id, ago in zip(ids, minutes):
        Message.create(campaign=campaign_id, customer=customer_id, status=MessageStatus.SENT, segments=1,
                       sent_at=now - dt.timedelta(minutes=ago, seconds=1))
    Message.create(campaign=campaign_id, customer=ids[-2], status=MessageStatus.FAILED, error_code="21211")
    Message.create(campaign=campaign_id, customer=ids[-1], status=MessageStatus.SKIPPED, error_code="unsubscribed")


def test_the_kept_counts_equal_the_rows_and_the_series_counts_each_minute_once(db):
    # Given a campaign with sends 0, 0, 1 and 5 minutes ago, its analytics recomputed
    now = utcnow().replace(second=30, microsecond=0)
    campaign_id = make_campaign()
    sent_rows(campaign_id, [0, 0, 1, 5], now)
    analytics.recompute_analytics(campaign_id)
    # When more is sent this minute and the recompute runs again
    extra = make_customers(1)[0]
    Message.create(campaign=campaign_id, customer=extra, status=MessageStatus.SENT, segments=1, sent_at=now)
    analytics.recompute_analytics(campaign_id)
    # Then the kept counts are those of the rows
    kept, rows = kept_counts(campaign_id), row_counts(campaign_id)
    assert kept.by_status == rows.by_status and kept.by_reason == rows.by_reason
    # And each minute holds its sends once (the recount replaced, not added)
    minute = now.replace(second=0)
    kept_minutes = {m.replace(second=0): n for m, n in SendsPerMinute.select(SendsPerMinute.minute, SendsPerMinute.sends)
                    .where(SendsPerMinute.campaign == campaign_id).tuples()}
    assert kept_minutes == {minute: 3, minute - dt.timedelta(minutes=1): 1, minute - dt.timedelta(minutes=5): 1}
    bars = sends_series.series(campaign_id)
    assert [bar.sends for bar in bars] == [1, 0, 0, 0, 1, 3] and sum(bar.minutes for bar in bars) == 6


def test_a_long_series_is_summed_into_at_most_max_bars(db):
    # Given sends over 300 minutes
    now = utcnow().replace(second=30, microsecond=0)
    campaign_id = make_campaign()
    sent_rows(campaign_id, list(range(0, 300, 3)), now)
    analytics.recompute_analytics(campaign_id)
    # When the series is read
    bars = sends_series.series(campaign_id, max_bars=120)
    # Then it is at most 120 bars of equal width holding every send
    assert len(bars) <= 120 and len({bar.minutes for bar in bars}) == 1 and sum(bar.sends for bar in bars) == 100


def test_accounts_verify_only_the_right_password_and_the_cli_makes_the_hash():
    # Given a hash made by the CLI
    made = CliRunner().invoke(main, ["dashboard", "hash-password", "--name", "carl", "--password", "s3cret pass"])
    empty = CliRunner().invoke(main, ["dashboard", "hash-password", "--password", ""])
    # When it is the account of DASHBOARD_USERS
    accounts = Accounts(made.output.strip())
    # Then the password signs in, others and other names do not; an empty password is one line
    assert made.exit_code == 0 and made.output.startswith("carl:scrypt:")
    assert accounts.verify("carl", "s3cret pass") == "carl"
    assert accounts.verify("carl", "s3cret") is None and accounts.verify("dora", "s3cret pass") is None
    assert empty.exit_code == 1 and empty.output == "Error: the password is empty\n"
