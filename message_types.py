"""The values a message's state is told with: why a message is skipped, what a claim
returns, what an accepted send records (``message_state.py`` changes the state itself)."""

from __future__ import annotations

from typing import NamedTuple


class SkipReason:
    UNSUBSCRIBED = "unsubscribed"
    MISSING_PHONE = "missing_phone"
    INVALID_PHONE = "invalid_phone"
    NO_QR_CODE = "no_qr_code"
    SUPPRESSED = "suppressed"
    DUPLICATE_PHONE = "duplicate_phone"
    FREQUENCY_CAP = "frequency_cap"
    LANDLINE = "landline"
    MISSING_ATTRIBUTE = "missing_attribute"
    CUSTOMER_DELETED = "customer_deleted"


class Claimed(NamedTuple):
    """What a claim of a message rendered at the fan-out returns."""

    id: int
    to_phone: str
    body: str
    segments: int
    campaign_id: int
    customer_id: int
    campaign_zone: str | None
    customer_zone: str | None
    #: The campaign's sender (``senders.py``), None for a campaign that has none yet.
    campaign_sender: str | None = None


class SentRecord(NamedTuple):
    """A send the SMS service accepted, to be recorded (``record_sent`` takes many)."""

    message_id: int
    sid: str
    segments: int
    campaign_id: int | None
