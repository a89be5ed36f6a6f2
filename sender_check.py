"""Whether Twilio knows a campaign's sender, asked before anything is sent (the preview, and
``campaign send``), so that a 21606 ("the From number is not a valid, SMS-capable inbound
phone number for your account") is found before the first message rather than by it.

A number must be one of the account's IncomingPhoneNumbers, SMS-capable; a messaging service
must exist. A Twilio that cannot be asked (a timeout, a refused connection, a 5xx, a list that
answers non-200, which the client raises as ``TwilioException("Unable to fetch page")``)
gives "not checked" with the reason, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException

import senders
from settings import Settings
from smsservice import make_twilio_client


@dataclass(frozen=True)
class SenderCheck:
    sender: str | None
    #: True: Twilio knows it; False: Twilio says it cannot send from it; None: not checked.
    known: bool | None
    detail: str

    def line(self) -> str:
        """One line for the operator."""
        if self.known is None:
            return f"sender {senders.describe(self.sender)}: sender not checked: {self.detail}"
        verdict = "known to Twilio" if self.known else "UNKNOWN to Twilio"
        return f"sender {senders.describe(self.sender)}: {verdict} ({self.detail})"


def check_at_twilio(client, sender: str) -> SenderCheck:
    """Ask Twilio (``client``: a twilio ``Client``) about ``sender``."""
    try:
        if senders.is_service(sender):
            client.messaging.v1.services(sender).fetch()
            return SenderCheck(sender, True, "the messaging service exists")
        numbers = client.incoming_phone_numbers.list(phone_number=sender, limit=20)
    except TwilioRestException as exc:
        if exc.status == 404 and senders.is_service(sender):
            return SenderCheck(sender, False, "no such messaging service in this account (every send would fail)")
        return SenderCheck(sender, None, f"Twilio answered HTTP {exc.status}")
    except requests.RequestException as exc:
        return SenderCheck(sender, None, f"Twilio could not be reached ({type(exc).__name__})")
    except (TwilioException, ValueError, KeyError) as exc:
        status = getattr(exc.args[1], "status_code", None) if len(exc.args) > 1 else None
        return SenderCheck(sender, None, f"Twilio answered HTTP {status}" if status else f"unreadable answer ({type(exc).__name__})")
    mine = [n for n in numbers if n.phone_number == sender]  # the filter also matches partial numbers
    if not mine:
        return SenderCheck(sender, False, "not a phone number of this Twilio account: sends would fail with 21606")
    if not (mine[0].capabilities or {}).get("sms"):
        return SenderCheck(sender, False, "this account's number is not SMS-capable: sends would fail with 21606")
    return SenderCheck(sender, True, "a phone number of this account, SMS-capable")


def check_sender(settings: Settings, sender: str | None) -> SenderCheck:
    """``check_at_twilio`` with the client the settings build; not checked when the backend
    is not Twilio or the campaign has no sender yet."""
    if settings.sms_backend != "twilio":
        return SenderCheck(sender, None, f"SMS_BACKEND={settings.sms_backend} sends nothing to Twilio")
    sender = sender or settings.sender
    if sender is None:
        return SenderCheck(None, None, "no sender is set (TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID)")
    return check_at_twilio(make_twilio_client(settings), sender)
