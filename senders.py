"""A campaign's sender: a phone number (E.164) or a Twilio messaging service (``MG`` and 32
hex digits), chosen when the campaign is created and kept on its row from start to end, so
that every send and every reconciliation of its messages uses it, whatever the workers'
``TWILIO_FROM_NUMBER`` / ``TWILIO_MESSAGING_SERVICE_SID`` say.

A sender travels as one string: its form says which it is (``+`` for a number, ``MG`` for a
service). On the row it is two columns, ``Campaign.from_number`` and
``Campaign.messaging_service_sid`` (at most one is set).
"""

from __future__ import annotations

from models import Campaign
from settings_checks import e164_ok, sid_ok

_service_ok = sid_ok("MG")


class SenderInvalid(ValueError):
    """A sender given by an operator that is neither form; the message names the problem."""


def is_service(sender: str) -> bool:
    return sender.startswith("MG")


def check(*, from_number: str | None = None, messaging_service_sid: str | None = None) -> str | None:
    """The sender an operator gave (``--from`` or ``--messaging-service``), checked; None if
    neither was given. Raises ``SenderInvalid`` with one line naming the problem."""
    if from_number and messaging_service_sid:
        raise SenderInvalid("give --from or --messaging-service, not both")
    if from_number is not None:
        if not e164_ok(from_number):
            raise SenderInvalid(f"--from {from_number!r} is not an E.164 number such as +12125550100")
        return from_number
    if messaging_service_sid is not None:
        if not _service_ok(messaging_service_sid):
            raise SenderInvalid(f"--messaging-service {messaging_service_sid!r} is not 'MG' followed by 32 hex digits")
        return messaging_service_sid
    return None


def columns(sender: str | None) -> dict[str, str | None]:
    """The campaign's columns for ``sender`` (both None for none)."""
    if sender is None:
        return {"from_number": None, "messaging_service_sid": None}
    if is_service(sender):
        return {"from_number": None, "messaging_service_sid": sender}
    return {"from_number": sender, "messaging_service_sid": None}


def of(campaign: Campaign) -> str | None:
    """The sender stored on a campaign row (a messaging service wins, as in the settings)."""
    return campaign.messaging_service_sid or campaign.from_number or None


def twilio_fields(sender: str) -> dict[str, str]:
    """The one keyword the twilio client's ``messages.create`` takes for ``sender``."""
    return {"messaging_service_sid": sender} if is_service(sender) else {"from_": sender}


def fix_on_campaign(campaign_id: int, default: str | None) -> str | None:
    """Give a campaign that has no sender ``default`` (a campaign created before senders were
    per campaign, or in code without one), once: a conditional UPDATE, so that two workers
    with different defaults agree on whichever came first. Returns the campaign's sender."""
    if default is not None:
        Campaign.update(**columns(default)).where(
            Campaign.id == campaign_id, Campaign.from_number.is_null(), Campaign.messaging_service_sid.is_null(),
        ).execute()
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    return None if campaign is None else of(campaign)


def describe(sender: str | None) -> str:
    """The sender in words, for the preview and the status."""
    if sender is None:
        return "none (the workers' setting at its start)"
    return f"messaging service {sender}" if is_service(sender) else f"number {sender}"
