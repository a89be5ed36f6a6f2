"""The web process: Twilio's webhooks (delivery status, inbound replies and opt-outs) and
the customers' short links, and the QR-code page they lead to (``qr_page.py``).

Run by gunicorn as the Procfile's ``web`` process (``gunicorn 'web:create_app()'``, its
settings in ``gunicorn.conf.py``: gevent workers). Flask is enough here: three small
endpoints, and twilio's ``RequestValidator`` works directly on Flask's form dict. Every
request first passes ``webguard`` (body size, field count, repeated fields, a deadline for
the body), before any database work; every Twilio request is then verified against
``PUBLIC_BASE_URL`` (behind Heroku's router the scheme and host the app sees are not the
ones Twilio called) before a field is read; a bad or missing signature answers 403 and
changes nothing. A field that does not fit its column is 400, except in a STOP from a
valid number, which is binding and always recorded.

The database stays the source of truth: a status callback is one conditional UPDATE that
only moves a message's delivery status forward, an opt-out is recorded once per inbound
message (its SID is unique), and every change asks the workers for a coalesced analytics
update through the same broker (``actors``).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import quote, urlsplit

from flask import Flask, Response, abort, g, redirect, request
from peewee import JOIN, IntegrityError
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

import consent
import inbox
import qr_page
from delivery import DELIVERY_RANK, report_delivery
from errors import InvalidPhone
from inbound import help_reply, opt_out_action, stopped_reply
from models import Click, Message, MessageStatus, OptOutEvent, QRCode, TrialSend, configure_database, database
from settings import Settings, get_settings
from sms import mask_phone, normalize_phone
from webguard import ERROR_CODE, SHORT_CODE, TWILIO_SID, WebFlask, install, printable

logger = logging.getLogger(__name__)

STATUS_PATH = "/twilio/status"
INBOUND_PATH = "/twilio/inbound"

#: Statuses Twilio may also report that carry nothing for the analytics: acknowledged (200)
#: without a change, rather than answered 400 (which Twilio would log as an error).
IGNORED_STATUSES = frozenset({"accepted", "scheduled", "read", "canceled", "receiving", "received"})

#: Link-preview fetchers and crawlers: their visits are redirected but not counted.
BOT_USER_AGENTS = (
    "facebookexternalhit", "facebot", "twitterbot", "slackbot", "slack-imgproxy", "whatsapp",
    "telegrambot", "discordbot", "linkedinbot", "googlebot", "bingbot", "skypeuripreview",
    "applebot", "imessage", "linkpreview", "pinterestbot", "redditbot", "embedly",
)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

#: Requests of one process doing database work at once (the others wait for a slot): the
#: gevent worker serves hundreds of connections, but holds no more database connections
#: than the 4 threads it replaced.
DB_SLOTS = 4

# --------------------------------------------------------------------------- domain

def apply_opt_out(e164: str, action: str, keyword: str | None, message_sid: str | None) -> tuple[bool, list[int]]:
    """Record the opt-out (or opt-in) carried by one inbound message: the number's consent
    changes (``consent.py``: the suppression list, every customer row holding the number);
    (applied, customer ids). A replay of the same MessageSid applies nothing: the audit row
    carrying the SID is unique. A STOP whose SID is unusable is recorded without one (and
    so applied every time)."""
    change = consent.opt_out if action == "stop" else consent.opt_in
    try:
        customer_ids = change(e164, source=consent.Source.INBOUND, keyword=keyword, message_sid=message_sid)
    except IntegrityError:
        if message_sid is not None and OptOutEvent.select().where(OptOutEvent.message_sid == message_sid).exists():
            return False, []
        raise
    return True, customer_ids


def is_bot(user_agent: str | None) -> bool:
    ua = (user_agent or "").lower()
    return not ua.strip() or any(marker in ua for marker in BOT_USER_AGENTS)


def link_target(code: str) -> tuple[int | None, int | None, str | None]:
    """(customer, campaign, the customer's QR code) of a short link's code.

    A message's own link (every message since links are per message) names its campaign;
    a customer's QR code (the links of earlier messages) is credited to the customer's most
    recent campaign. The QR code is None if the link leads nowhere.
    """
    message = (
        Message.select(Message.customer, Message.campaign, QRCode.code)
        .join(QRCode, JOIN.LEFT_OUTER, on=(QRCode.customer == Message.customer))
        .where(Message.link_code == code)
        .tuples()
        .first()
    )
    if message is not None:
        return message
    qr = QRCode.get_or_none(QRCode.code == code)
    if qr is None:
        return None, None, None
    return qr.customer_id, last_sent_campaign(qr.customer_id), qr.code


def trial_link_target(code: str) -> str | None:
    """The QR code a test send's link leads to: that of the customer whose message it showed,
    ``qr_page.SAMPLE_CODE`` for a sample customer's (no customer's code can be that one),
    None for a code no test send has (or a customer who has no QR code now)."""
    row = (TrialSend.select(TrialSend.customer_id, QRCode.code)
           .join(QRCode, JOIN.LEFT_OUTER, on=(QRCode.customer == TrialSend.customer_id))
           .where(TrialSend.link_code == code).tuples().first())
    if row is None:
        return None
    customer_id, qr_code = row
    return qr_page.SAMPLE_CODE if customer_id is None else qr_code


def last_sent_campaign(customer_id: int) -> int | None:
    row = (
        Message.select(Message.campaign)
        .where(Message.customer == customer_id, Message.status == MessageStatus.SENT)
        .order_by(Message.sent_at.desc(), Message.id.desc())
        .first()
    )
    return row.campaign_id if row is not None else None


# --------------------------------------------------------------------------- the app

def create_app(settings: Settings | None = None, *, sign_in_throttle=None) -> Flask:
    """The WSGI application. ``settings`` default to the environment's (``get_settings``);
    ``sign_in_throttle`` (``dashboard.throttle.SignInThrottle``) to theirs."""
    settings = settings or get_settings()
    # The workers' broker: a metrics request from here reaches the same queues.
    import actors  # noqa: F401
    from actors.services import get_services, request_metrics_update
    from dashboard.blueprint import register as register_dashboard  # its actions use the same broker

    if not logging.getLogger().handlers:  # under gunicorn: our lines on stderr, like the workers'
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [PID %(process)d] [%(name)s] [%(levelname)s] %(message)s")
    configure_database(settings.database_url)
    app = WebFlask(__name__)
    app.config["PROJECT_SETTINGS"] = settings
    install(app)  # limits and checks of the body first: no database slot is taken before
    db_slots = threading.BoundedSemaphore(DB_SLOTS)  # built here: gevent's when gevent runs
    if not settings.twilio_auth_token:
        logger.warning("TWILIO_AUTH_TOKEN is not set: every Twilio webhook will be refused (403)")
    if not settings.public_base_url:
        logger.warning("PUBLIC_BASE_URL is not set: Twilio signatures are checked against the URL this process sees")
    validator = RequestValidator(settings.twilio_auth_token.reveal()) if settings.twilio_auth_token else None
    public_base = settings.public_base_url.rstrip("/")

    def ask_metrics(campaign_id: int | None) -> None:
        if campaign_id is None:
            return
        try:
            request_metrics_update(campaign_id)
        except Exception:  # the change is committed; the next update will count it
            logger.exception("campaign %s: could not request an analytics update", campaign_id)

    def act_on_signal(campaign_id: int, error_code: str | None) -> None:
        """A report whose ErrorCode is one of Twilio's signals (a daily cap, an unregistered
        sender, a carrier rate limit): acted on once, when it changes the message."""
        if error_code is None:
            return
        try:
            signals = get_services().signals
            if signals is not None:
                signals.on_delivery_report(campaign_id, error_code)
        except Exception:  # the report is recorded; the next report of the same kind acts
            logger.exception("campaign %s: could not act on Twilio error %s", campaign_id, printable(error_code, 20))

    def verified() -> bool:
        """True when X-Twilio-Signature signs the public URL Twilio called and the form."""
        signature = request.headers.get("X-Twilio-Signature", "")
        if validator is None or not signature:
            return False
        path = request.script_root + request.full_path
        if path.endswith("?"):
            path = path[:-1]
        url = (public_base or request.host_url.rstrip("/")) + path
        return validator.validate(url, request.form, signature)

    @app.before_request
    def open_connection() -> None:
        db_slots.acquire()
        g.db_slot = True
        database.connect(reuse_if_open=True)

    @app.teardown_request
    def close_connection(exc) -> None:
        if not database.is_closed():
            database.close()
        if g.pop("db_slot", False):
            db_slots.release()

    @app.post(STATUS_PATH)
    def status_callback():
        if not verified():
            logger.warning("status callback refused: bad or missing Twilio signature")
            abort(403)
        sid = (request.form.get("MessageSid") or "").strip()
        status = (request.form.get("MessageStatus") or "").strip().lower()
        error_code = (request.form.get("ErrorCode") or "").strip() or None
        if not sid or not status:
            abort(400, "MessageSid and MessageStatus are required")
        if not TWILIO_SID.fullmatch(sid):
            refuse("status callback", f"MessageSid {printable(sid)} is not a Twilio SID")
        if status in IGNORED_STATUSES:
            return Response("", 200)
        if status not in DELIVERY_RANK:
            refuse("status callback", f"unknown MessageStatus {printable(status, 20)}")
        if error_code is not None and not ERROR_CODE.fullmatch(error_code):
            refuse("status callback", f"ErrorCode {printable(error_code, 20)} is not a Twilio error code")
        changed, campaign_id = report_delivery(sid, status, error_code)
        if campaign_id is None:
            # Usually a report that overtook the SID's record (still being written): kept
            # until the SID is known, then applied by the campaign's metrics update.
            logger.info("status callback for %s (%s) before its SID is recorded: kept", sid, status)
        elif changed:
            act_on_signal(campaign_id, error_code)
            ask_metrics(campaign_id)
        return Response("", 200)

    @app.post(INBOUND_PATH)
    def inbound():
        if not verified():
            logger.warning("inbound message refused: bad or missing Twilio signature")
            abort(403)
        sid = (request.form.get("MessageSid") or "").strip()
        sender = request.form.get("From") or ""
        if not sender.strip():
            abort(400, "From is required")
        action, keyword = opt_out_action(request.form.get("Body"), request.form.get("OptOutType"))
        if not TWILIO_SID.fullmatch(sid):
            # A STOP is binding whatever its SID: recorded without it. Anything else needs
            # the SID that makes a replay harmless (a replayed START would resubscribe).
            problem = f"MessageSid {printable(sid)} is not a Twilio SID" if sid else "MessageSid is required"
            if action != "stop":
                refuse("inbound message", problem)
            logger.warning("inbound %s from %s: %s; recorded without it", keyword, mask_phone(sender), problem)
            sid = None
        try:
            e164 = normalize_phone(sender, settings.default_region)
        except InvalidPhone:
            logger.warning("inbound %s from %s: not a phone number we could have texted", keyword or "reply",
                           mask_phone(sender))
            return twiml()
        answered_by_twilio = bool((request.form.get("OptOutType") or "").strip())
        if action in (None, "help"):
            # Kept in the inbox (a replay adds nothing); a HELP Twilio did not answer, we do.
            kept = inbox.record_reply(e164, request.form.get("Body"), sid)
            logger.info("inbound %s from %s: %s", keyword or "reply", mask_phone(e164), "kept" if kept else "replay, ignored")
            if action == "help" and kept is not None and not answered_by_twilio:
                return twiml(help_reply(e164, keyword, configured=settings.sms_help_reply))
            return twiml()
        applied, customer_ids = apply_opt_out(e164, action, keyword, sid)
        if not applied:
            logger.info("inbound %s from %s: replay of %s, ignored", keyword, mask_phone(e164), sid)
        elif not customer_ids:
            logger.warning("inbound %s from %s: no customer has this number (recorded)", keyword, mask_phone(e164))
        else:
            logger.info("inbound %s from %s: %s customer(s) %s", keyword, mask_phone(e164), len(customer_ids),
                        "unsubscribed" if action == "stop" else "resubscribed")
        if action == "stop" and applied and not answered_by_twilio:
            return twiml(stopped_reply(keyword))
        return twiml()

    short_prefix = urlsplit(settings.short_url_base).path.rstrip("/")

    @app.get(f"{short_prefix}/<code>")
    def short_link(code: str):
        if not SHORT_CODE.fullmatch(code):
            abort(404)
        customer_id, campaign_id, qr_code = link_target(code)
        if qr_code is None:
            qr_code = trial_link_target(code)  # a test send's link: the page, never a click
            if qr_code is None:
                abort(404)
            if qr_code == qr_page.SAMPLE_CODE:
                return qr_page.sample_response()
            return redirect(settings.qr_display_url.replace("{code}", quote(qr_code, safe="")), code=302)
        user_agent = request.headers.get("User-Agent")
        if request.method == "GET" and not is_bot(user_agent):
            kept = "".join(ch for ch in user_agent if ch.isprintable())[:300]
            Click.create(customer=customer_id, campaign=campaign_id, code=code, user_agent=kept)
            ask_metrics(campaign_id)
        return redirect(settings.qr_display_url.replace("{code}", quote(qr_code, safe="")), code=302)

    qr_page.register(app, qr_display_url=settings.qr_display_url)
    register_dashboard(app, settings, sign_in_throttle=sign_in_throttle)  # the operators' pages under /dashboard (or a 503 without a secret key)
    return app


def refuse(what: str, problem: str):
    """400 with ``problem`` (already log-safe), logged."""
    logger.warning("%s refused: %s", what, problem)
    abort(400, problem)


def twiml(reply: str | None = None) -> Response:
    """TwiML answering with ``reply``; empty without one (Twilio's opt-out handling sends
    the confirmation of its own keywords itself)."""
    if reply is None:
        return Response(EMPTY_TWIML, 200, content_type="text/xml")
    answer = MessagingResponse()
    answer.message(reply)
    return Response(str(answer), 200, content_type="text/xml; charset=utf-8")  # French replies are not ASCII


_app: Flask | None = None


def __getattr__(name: str):
    """``web.app`` is built on first use, so importing this module needs no environment."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
