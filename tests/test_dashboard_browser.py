"""The dashboard in a real browser: Playwright for Python driving Debian's ``chromium``
(headless), against the real web app served over HTTP by werkzeug in a thread, on
PostgreSQL, with campaigns run by a stub worker through the fake Twilio.

One browser per module. A screenshot of each page goes to ``tests/screenshots/`` (printed
at the end of the module; gitignored). Without chromium these tests fail, in one line: CI
installs it (``.ci/run``).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import uuid

import pytest
import requests
from twilio.request_validator import RequestValidator
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

import actors
import campaigns
from models import Campaign, CampaignStatus, Event, Message, MessageStatus
from settings import Secret, Settings
from tests.conftest import ROOT, join_all, wait_for
from tests.endpoints import POSTGRES_URL, REDIS_URL
from tests.factories import make_campaign, make_customers, phone_for
from web import create_app

TOKEN = "dashboard-browser-auth-token"
PUBLIC = "https://campaigns.example.com"
OPERATOR, PASSWORD = "alice", "correct horse battery staple"
SCREENSHOTS = os.path.join(ROOT, "tests", "screenshots")
#: The figures the campaign page shows with a ``data-figure``, as status_report names them.
FIGURES = ("status", "targeted", "sent", "delivered", "undelivered", "failed", "skipped", "cancelled", "pending",
           "unique_clicks")


@pytest.fixture(scope="module")
def browser(pytestconfig):
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (.ci/run does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    os.makedirs(SCREENSHOTS, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\ndashboard screenshots: {SCREENSHOTS}")


class Server:
    def __init__(self, app):
        self.httpd = make_server("127.0.0.1", 0, app, threaded=True)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def signed_status(self, sid: str, status: str, *, sign: bool = True) -> requests.Response:
        params = {"MessageSid": sid, "MessageStatus": status, "AccountSid": "AC" + "f" * 32}
        headers = {"X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(PUBLIC + "/twilio/status", params)}
        return requests.post(self.base + "/twilio/status", data=params, headers=headers if sign else {}, timeout=10)


@pytest.fixture
def server(postgres_db, stub_broker, stub_worker, twilio_backend):
    settings = Settings(
        database_url=POSTGRES_URL, redis_url=REDIS_URL, dramatiq_namespace=f"test-{uuid.uuid4().hex[:12]}",
        twilio_auth_token=Secret(TOKEN), public_base_url=PUBLIC,
        short_url_base="http://localhost:8000/q", qr_display_url="https://cdn.example.com/qr/{code}", quiet_hours="off",
        sms_rate_limit="1000/second", dashboard_secret_key=Secret("s" * 40),
        dashboard_users=f"{OPERATOR}:{generate_password_hash(PASSWORD, method='scrypt')}",
    )
    settings.validate()
    running = Server(create_app(settings))
    yield running
    running.httpd.shutdown()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    yield context.new_page()
    context.close()


def sign_in(page, base: str, next_path: str = "/dashboard/") -> None:
    page.goto(base + next_path)
    page.fill("input[name=name]", OPERATOR)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def shot(page, name: str) -> None:
    page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)


def figures(page) -> dict[str, str]:
    return {el.get_attribute("data-figure"): el.inner_text() for el in page.query_selector_all("[data-figure]")}


def shown(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def ran_campaign(fake_twilio) -> int:
    """A campaign of 6 run to the end through the fake Twilio: one customer unsubscribed,
    one number refused with 21211."""
    make_customers(6, unsubscribed={4})
    fake_twilio.fail_number(phone_for(5), 21211)
    campaign_id = make_campaign(name="Winter deals")
    actors.start(campaign_id)
    join_all(actors.broker)
    wait_for(lambda: Campaign.get_by_id(campaign_id).status == CampaignStatus.COMPLETED)
    return campaign_id


def test_signed_out_every_dashboard_url_goes_to_sign_in_and_the_webhooks_need_only_their_signature(
        server, page, fake_twilio):
    # Given a campaign that ran, and no session
    campaign_id = ran_campaign(fake_twilio)
    customer_id = Message.select(Message.customer).where(Message.campaign == campaign_id).first().customer_id
    urls = ["/dashboard", "/dashboard/", f"/dashboard/campaigns/{campaign_id}", f"/dashboard/campaigns/{campaign_id}/preview",
            "/dashboard/campaigns/new", "/dashboard/customers", f"/dashboard/customers/{customer_id}", "/dashboard/nowhere"]
    posts = ["/dashboard/campaigns", f"/dashboard/campaigns/{campaign_id}/pause", "/dashboard/customers/find",
             "/dashboard/sign-out"]
    # When each is asked for without a session
    answers = {url: requests.get(server.base + url, allow_redirects=True, timeout=10) for url in urls}
    refused = {url: requests.post(server.base + url, data={"x": "1"}, allow_redirects=False, timeout=10) for url in posts}
    # Then every one ends on the sign-in page, none shows a figure
    for url, answer in answers.items():
        assert answer.status_code == 200 and "/dashboard/sign-in" in answer.url and "Sign in" in answer.text, url
        assert "Winter deals" not in answer.text, url
    for url, answer in refused.items():
        assert answer.status_code == 302 and "/dashboard/sign-in" in answer.headers["Location"], url
    # and in the browser, a campaign's URL shows the sign-in form
    page.goto(server.base + f"/dashboard/campaigns/{campaign_id}")
    assert "/dashboard/sign-in" in page.url and page.is_visible("input[name=password]")
    shot(page, "sign-in")
    # And the webhooks and short links still work without a session, by signature alone
    sid = Message.select(Message.twilio_sid).where(Message.campaign == campaign_id, Message.twilio_sid.is_null(False)).first().twilio_sid
    assert server.signed_status(sid, "delivered", sign=False).status_code == 403
    assert server.signed_status(sid, "delivered").status_code == 200
    assert Message.get(Message.twilio_sid == sid).delivery_status == "delivered"
    code = Message.select(Message.link_code).where(Message.twilio_sid == sid).scalar()
    assert requests.get(server.base + f"/q/{code}", allow_redirects=False, timeout=10,
                        headers={"User-Agent": "Mozilla/5.0"}).status_code == 302


def test_an_operator_signs_in_and_the_pages_show_the_figures_of_campaign_status(server, page, fake_twilio):
    # Given a campaign that ran, one message delivered and one link clicked
    campaign_id = ran_campaign(fake_twilio)
    sid, code = Message.select(Message.twilio_sid, Message.link_code).where(
        Message.campaign == campaign_id, Message.status == MessageStatus.SENT).tuples().first()
    assert server.signed_status(sid, "delivered").status_code == 200
    requests.get(server.base + f"/q/{code}", allow_redirects=False, timeout=10, headers={"User-Agent": "Mozilla/5.0"})
    join_all(actors.broker)
    draft_id = make_campaign(name="Spring draft")
    # When the operator signs in with a wrong password, then the right one
    page.goto(server.base + "/dashboard/")
    page.fill("input[name=name]", OPERATOR)
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "wrong name or password" in page.inner_text("main")
    sign_in(page, server.base)
    # Then the list shows the campaigns with their figures
    assert page.url.endswith("/dashboard/")
    row = page.query_selector(f"tr[data-campaign='{campaign_id}']")
    assert row is not None and "Winter deals" in row.inner_text()
    assert page.query_selector(f"tr[data-campaign='{draft_id}']") is not None
    shot(page, "campaigns")
    # And the campaign page's figures are those of campaigns.status_report
    page.click("text=Winter deals")
    report = campaigns.status_report(campaign_id)
    shown_figures = figures(page)
    assert {name: shown_figures[name] for name in FIGURES} == {name: shown(report[name]) for name in FIGURES}
    assert report["delivered"] == 1 and report["unique_clicks"] == 1 and report["failed_by_reason"] == {"21211": 1}
    failed = page.inner_text("table[data-reasons=failed]")
    assert "21211" in failed and "invalid 'To' phone number" in failed
    assert page.query_selector("svg.chart rect.bar") is not None  # the sends per minute
    shot(page, "campaign")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    shot(page, "campaign-phone")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing wider than the screen
    page.set_viewport_size({"width": 1100, "height": 900})
    # And the draft's preview, the new-campaign form and a customer found by phone
    page.goto(server.base + f"/dashboard/campaigns/{draft_id}/preview")
    assert figures(page)["audience"] == "6" and page.query_selector(".sample pre") is not None
    shot(page, "preview")
    page.goto(server.base + "/dashboard/campaigns/new")
    shot(page, "new-campaign")
    page.goto(server.base + "/dashboard/customers")
    page.fill("input[name=phone]", phone_for(0))
    page.click("button:has-text('Find')")
    assert re.search(r"/dashboard/customers/\d+$", page.url) and phone_for(0) not in page.url
    assert figures(page)["phone"] == "+1******0000" and "Winter deals" in page.inner_text("main")
    shot(page, "customer")


def test_pause_and_resume_from_the_page_take_effect_and_a_form_without_its_csrf_token_is_refused(
        server, page, fake_twilio):
    # Given a campaign sending slowly (its own limit: one an hour)
    make_customers(4)
    campaign_id = Campaign.create(name="Slow one", template="Hi {first_name}: {short_url}", rate_limit="1/hour").id
    actors.start(campaign_id)
    wait_for(lambda: Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING)
    sign_in(page, server.base, f"/dashboard/campaigns/{campaign_id}")
    # When the operator pauses it from its page
    page.click("button[value=pause]")
    # Then it is paused in the database, by them, and the page says so
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.PAUSED
    assert Campaign.get_by_id(campaign_id).status_reason == f"paused by {OPERATOR}"
    assert f"campaign {campaign_id} paused" in page.inner_text(".flash")
    # When they resume it
    page.click("button[value=resume]")
    # Then it sends again, and both actions are in its audit trail with their name
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING
    trail = [(e.code, e.detail) for e in Event.select().where(Event.campaign_id == campaign_id).order_by(Event.id)]
    assert ("operator_pause", f"{OPERATOR}: campaign {campaign_id} paused") in trail
    assert ("operator_resume", f"{OPERATOR}: campaign {campaign_id} resumed") in trail
    # When a form is forged in the signed-in browser (its cookie sent) without the CSRF token
    forged = page.request.post(server.base + f"/dashboard/campaigns/{campaign_id}/cancel",
                               form={"do": "cancel"}, max_redirects=0)
    wrong = page.request.post(server.base + f"/dashboard/campaigns/{campaign_id}/cancel",
                              form={"do": "cancel", "csrf_token": uuid.uuid4().hex}, max_redirects=0)
    # Then it is refused and nothing changed
    assert forged.status == 403 and wrong.status == 403 and "CSRF" in forged.text()
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING
    # And the page's own cancel works
    page.click("button[value=cancel]")
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.CANCELLED
    shot(page, "campaign-cancelled")
