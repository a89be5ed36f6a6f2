"""Sending one SMS: the Twilio backend, a console backend for development, and the one
place where Twilio's answers are mapped onto the project's error hierarchy."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import sys
import uuid
from dataclasses import dataclass
from typing import Protocol

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.rest import Client

import senders
import twilio_signals
from errors import HoldError, MaybeSent, PermanentError, RecipientOptedOut, SenderError, TransientError
from settings import Settings
from segments import measure
from sms import mask_phone
from twilio_http import SignalHttpClient

logger = logging.getLogger(__name__)

#: Per-recipient errors: this customer cannot get this message; nobody else is affected.
RECIPIENT_ERRORS = {
    21211: "invalid 'To' phone number",
    21214: "'To' phone number cannot be reached",
    21217: "phone number does not appear to be valid",
    21401: "invalid phone number",
    21407: "this phone number type does not support SMS",
    21408: "sending to this destination region is not enabled",
    21421: "phone number is invalid",
    21604: "'To' phone number is required",
    21608: "'To' number is not verified for this trial account",
    21612: "the 'To' number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
    21617: "the message body exceeds the 1600 character limit",
    21635: "'To' number cannot be a landline",
    30004: "message blocked",
    30005: "unknown destination handset",
    30006: "landline or unreachable carrier",
    30007: "message filtered by the carrier",
}
#: The recipient has opted out at Twilio's level; also unsubscribes the customer.
OPTED_OUT = 21610
#: Sender or account errors: every further message would fail the same way.
SENDER_ERRORS = {
    20003: "Twilio rejected the credentials (check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)",
    20005: "the Twilio account is not active",
    21212: "the 'From' number is not a valid phone number or short code",
    21603: "no 'From' number or messaging service was given",
    21606: "the 'From' number is not a valid, SMS-capable Twilio number for this account",
    21659: "the 'From' number is not a Twilio number of this account",
    21704: "the messaging service has no phone numbers in its sender pool",
    30002: "the Twilio account is suspended",
}
#: Twilio's bounds of ``ValidityPeriod``, in seconds.
VALIDITY_PERIOD_MAX_S = 36_000
#: Throttling and queue-overflow errors that clear by themselves.
TRANSIENT_ERRORS = {20429: "too many requests", 30001: "Twilio's queue overflowed"}

def classify_twilio_error(status: int, code: int | None, message: str = "", *, retry_after_s: float | None = None) -> Exception:
    """Map one Twilio error answer onto PermanentError / TransientError / SenderError /
    HoldError; an answer that is one of Twilio's signals (``twilio_signals``) carries it.
    ``retry_after_s``: the answer's ``Retry-After``, if any."""
    signal = twilio_signals.signal_for(code, status)
    if signal is not None:
        exc = _signal_error(signal, status, code, retry_after_s)
        exc.signal = signal
        return exc
    detail = message or "no message"
    if code == OPTED_OUT:
        return RecipientOptedOut("recipient has opted out (replied STOP)", code=code)
    if code in RECIPIENT_ERRORS:
        return PermanentError(RECIPIENT_ERRORS[code], code=code)
    if code in SENDER_ERRORS:
        return SenderError(SENDER_ERRORS[code], code=code)
    if code in TRANSIENT_ERRORS or status == 429:
        return TransientError(TRANSIENT_ERRORS.get(code, "too many requests"), code=code or 429)
    if status >= 500:
        # A 5xx may come after Twilio created the message.
        return MaybeSent(f"Twilio answered HTTP {status}: {detail}", code=code or status)
    if status in (401, 403):
        return SenderError(f"Twilio refused the request (HTTP {status}): {detail}", code=code or status)
    return PermanentError(f"Twilio rejected the message (HTTP {status}, code {code}): {detail}", code=code or status)

def _signal_error(signal: twilio_signals.Signal, status: int, code: int | None, retry_after_s: float | None) -> Exception:
    action = twilio_signals.Action
    if signal.action is action.HOLD_ALL_BRIEFLY:
        retry_ms = int(retry_after_s * 1000) if retry_after_s else None
        return TransientError(TRANSIENT_ERRORS[20429], code=code or 429, retry_after_ms=retry_ms)
    if signal.action is action.PAUSE_SENDER:
        return SenderError(signal.reason, code=code)
    if signal.action in (action.HOLD_SENDER_UNTIL_CAP_RESET, action.HOLD_ALL_FOR_A_DAY):
        return HoldError(signal.reason, code=code)
    if signal.action is action.COUNT_FILTERING:
        return PermanentError(RECIPIENT_ERRORS[30007], code=code)
    return TransientError(signal.reason, code=code)  # SLOW_CAMPAIGN: this message later, slower

def _retry_after_of(client: Client) -> float | None:
    http_client = getattr(client, "http_client", None)
    return http_client.retry_after_s() if isinstance(http_client, SignalHttpClient) else None

def classify_transport_error(exc: requests.RequestException) -> Exception:
    """A connect failure means the request never left; anything later may have been sent."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return TransientError("timed out connecting to Twilio", code="connect_timeout")
    if isinstance(exc, requests.exceptions.ConnectionError) and _never_connected(exc):
        return TransientError("could not connect to Twilio", code="connect_error")
    if isinstance(exc, requests.exceptions.Timeout):
        return MaybeSent("timed out waiting for Twilio's answer", code="read_timeout")
    return MaybeSent(f"connection to Twilio failed mid-request ({type(exc).__name__})", code="connection_dropped")

def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    text = repr(exc)
    return "NewConnectionError" in text or "Connection refused" in text or "NameResolutionError" in text

@dataclass(frozen=True)
class SendResult:
    sid: str
    status: str
    segments: int | None = None

class SmsBackend(Protocol):
    """``sender`` is the campaign's (``senders.py``); None means the backend's own default."""

    def send(self, *, to: str, body: str, sender: str | None = None, valid_for_s: float | None = None) -> SendResult:
        """``valid_for_s``: how long the message may still wait in the provider's queue
        before it should rather not arrive (the recipient's quiet hours start); None: no bound
        but the backend's own."""

    def find_sent(self, *, to: str, body: str, since: dt.datetime, sender: str | None = None) -> SendResult | None:
        """The message with this body sent to ``to`` from ``sender`` since ``since`` (naive UTC), if any."""

class TwilioBackend:
    """Sends through the real ``twilio`` client; every failure leaves as a project error."""

    def __init__(self, client: Client, *, sender: dict[str, str], status_callback_url: str = "",
                 validity_period_s: int = 14_400) -> None:
        self.client = client
        self.sender = sender
        self.status_callback_url = status_callback_url or None
        self.validity_period_s = validity_period_s

    def _fields(self, sender: str | None) -> dict[str, str]:
        return self.sender if sender is None else senders.twilio_fields(sender)

    def validity_period(self, valid_for_s: float | None) -> int:
        """Twilio's ``ValidityPeriod`` (1 to 36000 s): ``SMS_VALIDITY_PERIOD_S``, or less when
        the recipient's quiet hours start sooner, so that a message left waiting in Twilio's
        queue expires (30036) rather than arrive inside them or hours late."""
        seconds = self.validity_period_s if valid_for_s is None else min(self.validity_period_s, int(valid_for_s))
        return max(1, min(VALIDITY_PERIOD_MAX_S, seconds))

    def send(self, *, to: str, body: str, sender: str | None = None, valid_for_s: float | None = None) -> SendResult:
        try:
            message = self.client.messages.create(
                to=to, body=body, status_callback=self.status_callback_url,
                validity_period=self.validity_period(valid_for_s), **self._fields(sender)
            )
        except TwilioRestException as exc:
            raise classify_twilio_error(exc.status, exc.code, exc.msg, retry_after_s=_retry_after_of(self.client)) from None
        except TwilioServiceException as exc:
            raise classify_twilio_error(exc.status, exc.code, exc.title, retry_after_s=_retry_after_of(self.client)) from None
        except requests.RequestException as exc:
            raise classify_transport_error(exc) from None
        except (TwilioException, ValueError, KeyError) as exc:
            # An answer we could not read: the message may well exist.
            raise MaybeSent(f"unreadable answer from Twilio ({type(exc).__name__})", code="bad_response") from None
        return _result(message)

    def find_sent(self, *, to: str, body: str, since: dt.datetime, sender: str | None = None) -> SendResult | None:
        """The newest 50 messages to ``to`` are searched for one from ``sender`` (the
        campaign's; else this backend's) with this body (unique: it carries the message's
        own short link) created since ``since``."""
        since_utc = since.replace(tzinfo=dt.timezone.utc)
        fields = self._fields(sender)
        try:
            for message in self.client.messages.list(to=to, limit=50, page_size=50):
                created = message.date_created
                if message.body == body and _from_sender(message, fields) and (created is None or created >= since_utc):
                    return _result(message)
        except TwilioRestException as exc:
            raise TransientError(f"could not list messages at Twilio (HTTP {exc.status})", code="lookup_failed") from None
        except requests.RequestException as exc:
            raise TransientError(f"could not list messages at Twilio ({type(exc).__name__})", code="lookup_failed") from None
        except (TwilioException, ValueError, KeyError) as exc:
            # A list answered with a status other than 200 ("Unable to fetch page"), or an
            # answer we could not read.
            status = getattr(exc.args[1], "status_code", None) if len(exc.args) > 1 else None
            detail = f"HTTP {status}" if status else type(exc).__name__
            raise TransientError(f"could not list messages at Twilio ({detail})", code="lookup_failed") from None
        return None

def _from_sender(message, fields: dict[str, str]) -> bool:
    if "messaging_service_sid" in fields:
        return message.messaging_service_sid == fields["messaging_service_sid"]
    return message.from_ == fields.get("from_")

def _result(message) -> SendResult:
    segments = int(message.num_segments) if message.num_segments not in (None, "") else None
    return SendResult(sid=message.sid, status=message.status or "queued", segments=segments)

class ConsoleBackend:
    """Prints each message instead of sending it, for development and the demo: the whole
    message, footer included, each of its lines indented under a header line, in one write
    (the threads of a worker never interleave their messages).

    Parameters:
        stream: where to print (default: ``sys.stdout`` at each send).
    """

    def __init__(self, stream=None) -> None:
        self.stream = stream

    def send(self, *, to: str, body: str, sender: str | None = None, valid_for_s: float | None = None) -> SendResult:
        length = measure(body)
        lines = body.splitlines() or [""]
        text = f"[console sms] to {mask_phone(to)} ({length.encoding}, {length.units} units):\n" + "".join(
            f"    {line}\n" for line in lines)
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()
        return SendResult(sid="CO" + uuid.uuid4().hex, status="sent", segments=length.segments)

    def find_sent(self, *, to: str, body: str, since: dt.datetime, sender: str | None = None) -> SendResult | None:
        return None

class NullBackend:
    """Accepts every message at once and keeps nothing: for benchmarks of the send path, so
    it costs next to nothing itself (unique SIDs from a per-process prefix and a counter;
    no segment count, as the send path has its own)."""

    def __init__(self) -> None:
        self._prefix = "NU" + uuid.uuid4().hex[:16]
        self._serial = itertools.count()

    def send(self, *, to: str, body: str, sender: str | None = None, valid_for_s: float | None = None) -> SendResult:
        return SendResult(sid=f"{self._prefix}{next(self._serial):016x}", status="sent", segments=None)

    def find_sent(self, *, to: str, body: str, since: dt.datetime, sender: str | None = None) -> SendResult | None:
        return None

def make_twilio_client(settings: Settings) -> Client:
    """The one place a Twilio client is built: explicit timeout, optional local base URL."""
    # A process with more requests in flight than connections kept would open, and drop,
    # a TLS connection for each of the others (twilio's default client keeps CPUs + 4).
    pool_size = max(32, min(settings.twilio_max_concurrent, 256))
    http_client = SignalHttpClient(timeout=settings.twilio_timeout_s, pool_maxsize=pool_size)
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token.reveal(), http_client=http_client)
    if settings.twilio_api_base_url:
        client.api.base_url = settings.twilio_api_base_url.rstrip("/")
        client.messaging.base_url = client.api.base_url  # the sender check's messaging services
        # TWILIO_EDGE / TWILIO_REGION would rewrite the local host into *.twilio.com.
        client.edge = None
        client.region = None
    # The client logs query strings at INFO, and those can carry phone numbers.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    return client

def make_backend(settings: Settings) -> SmsBackend:
    if settings.sms_backend == "console":
        return ConsoleBackend()
    if settings.sms_backend == "null":
        return NullBackend()
    settings._validate_twilio()
    return TwilioBackend(
        make_twilio_client(settings),
        sender=settings.twilio_sender,
        status_callback_url=settings.twilio_status_callback_url,
        validity_period_s=settings.sms_validity_period_s,
    )
