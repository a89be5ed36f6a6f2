"""The first step of a send: claim the message, check quiet hours, take the first try at the
rate-limit slot; concurrent claims of a worker process's threads share one statement and one
round trip to the limiter (``batching.Combiner``, group commit).

Also the message as the send path loads it, and the quiet-hours policy it applies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple, Protocol

import message_state
import message_types
from batching import Combiner
from models import CampaignStatus, HotStatement, Message, MessageStatus, utcnow
from quiet import QuietHours, recipient_zone


class QuietNow(Exception):
    """The recipient is inside quiet hours until ``until_utc`` (naive UTC)."""

    def __init__(self, until_utc: dt.datetime) -> None:
        super().__init__(f"quiet hours until {until_utc:%Y-%m-%d %H:%M} UTC")
        self.until_utc = self.queued_at = until_utc


@dataclass(frozen=True)
class QuietPolicy:
    """Quiet hours in the recipient's local time, with an injectable clock (naive UTC)."""

    hours: QuietHours
    default_zone: str
    clock: Callable[[], dt.datetime] = utcnow

    def check(self, message: "LoadedMessage") -> None:
        zone = recipient_zone(
            message.to_phone, customer_zone=message.customer.time_zone,
            campaign_zone=message.campaign.time_zone, default_zone=self.default_zone,
        )
        until = self.hours.next_allowed_utc(self.clock(), zone)
        if until is not None:
            raise QuietNow(until)

    def seconds_until_quiet(self, message: "LoadedMessage") -> float:
        """How long until the recipient's quiet hours start (0 inside them)."""
        zone = recipient_zone(
            message.to_phone, customer_zone=message.customer.time_zone,
            campaign_zone=message.campaign.time_zone, default_zone=self.default_zone,
        )
        return self.hours.seconds_until_start(self.clock(), zone)


@dataclass
class LoadedMessage:
    """A message row with its campaign, customer and QR code, as the send path needs them."""

    id: int
    status: str
    to_phone: str | None
    body: str | None
    segments: int | None
    sending_at: dt.datetime | None
    campaign: SimpleNamespace
    customer: SimpleNamespace
    #: When the message was first claimed: the reconciliation window starts there, however
    #: often the row was taken again since.
    first_attempt_at: dt.datetime | None = None
    #: Claims and reconciliation takes so far.
    attempts: int = 0


_load = HotStatement("send_load", (
    'SELECT m."status", m."to_phone", m."body", m."segments", m."sending_at", m."first_attempt_at", m."attempts", '
    'c."id", c."status", c."template", c."time_zone", c."smart_encoding", c."on_overflow", '
    'COALESCE(c."messaging_service_sid", c."from_number"), '
    'u."id", u."first_name", u."last_name", u."sms_subscribed", u."time_zone", u."attributes", q."code" '
    'FROM "message" m JOIN "campaign" c ON c."id" = m."campaign_id" '
    'LEFT OUTER JOIN "customer" u ON u."id" = m."customer_id" '
    'LEFT OUTER JOIN "qrcode" q ON q."customer_id" = u."id" WHERE m."id" = {p}'
))


def load_for_send(message_id: int) -> LoadedMessage | None:
    """Message, campaign, customer and QR code in one query; the customer is None once it
    was deleted (the row stays)."""
    row = _load.execute((message_id,)).fetchone()
    if row is None:
        return None
    (status, to_phone, body, segments, sending_at, first_attempt_at, attempts, campaign_id, campaign_status, template,
     campaign_zone, smart_encoding, on_overflow, campaign_sender, customer_id, first_name, last_name, subscribed,
     customer_zone, attributes, qr_code) = row
    return LoadedMessage(
        id=message_id, status=status, to_phone=to_phone, body=body, segments=segments,
        sending_at=Message.sending_at.python_value(sending_at),
        first_attempt_at=Message.first_attempt_at.python_value(first_attempt_at), attempts=attempts or 0,
        campaign=SimpleNamespace(id=campaign_id, status=campaign_status, template=template, time_zone=campaign_zone,
                                 smart_encoding=smart_encoding, on_overflow=on_overflow, sender=campaign_sender),
        customer=None if customer_id is None else SimpleNamespace(
            id=customer_id, first_name=first_name, last_name=last_name, sms_subscribed=bool(subscribed),
            time_zone=customer_zone, attributes=attributes, qr=SimpleNamespace(code=qr_code) if qr_code else None,
        ),
    )


class BatchSlots(Protocol):
    """An ``acquire_slot`` that can also take the slots of a batch of claims at once."""

    def __call__(self, cost: int, campaign_id: int, first: Any = None) -> None: ...

    def group(self, campaign_id: int) -> Any:
        """Requests with equal groups can share a ``take_many``."""

    def take_many(self, costs: list[int], campaign_id: int) -> list[Any]:
        """One try for each cost, in one round trip; each result goes to ``__call__(first=)``."""


class ClaimRequest(NamedTuple):
    message_id: int
    deferrals: int
    acquire_slot: Callable[..., None] | None = None
    quiet: QuietPolicy | None = None
    #: The claim's time, once its batch has chosen it: a claim whose batch fails (or whose
    #: leader is interrupted) after the statement is undone by that time.
    stamp: list | None = None


def claim_rendered(
    message_id: int, deferrals: int, acquire_slot: Callable[..., None] | None = None, quiet: QuietPolicy | None = None,
) -> tuple[LoadedMessage | None, Any]:
    """Claim a pending message rendered at the fan-out (``message_state.claim_rendered``);
    concurrent claims of this process's threads share one statement.

    Returns the message (None if not claimed) and, when ``acquire_slot`` is ``BatchSlots``,
    the first try at its slot made for the whole batch right after the claim (or the
    ``QuietNow`` that kept it from trying), to pass on to ``acquire_slot(first=)``; an
    exception is raised by the send, which undoes the claim.
    """
    request = ClaimRequest(message_id, deferrals, acquire_slot, quiet, [])
    try:
        return _claims.submit(request)
    except BaseException:
        # The batch failed, or the thread running it was interrupted, maybe after its
        # statement committed: this message was not sent, so its claim (if made) is undone
        # rather than left for reconciliation.
        if request.stamp:
            message_state.release_claim(message_id, request.stamp[0])
        raise


def claim_rendered_many(requests: list[ClaimRequest]) -> list[tuple[LoadedMessage | None, Any]]:
    """``claim_rendered`` for a batch: one statement, then quiet hours, then one round trip
    per group of slots."""
    claimed_at = utcnow()
    for request in requests:
        if request.stamp is not None:
            request.stamp.append(claimed_at)
    rows = message_state.claim_rendered([(r.message_id, r.deferrals) for r in requests], claimed_at=claimed_at)
    messages = [None if row is None else _loaded(row) for row in rows]
    results: list[tuple[LoadedMessage | None, Any]] = [(message, None) for message in messages]
    groups: dict[Any, list[int]] = {}
    for i, (request, message) in enumerate(zip(requests, messages)):
        if message is None or not hasattr(request.acquire_slot, "take_many"):
            continue
        if request.quiet is not None:
            try:
                request.quiet.check(message)
            except Exception as exc:  # QuietNow, or anything else: this message's, not the batch's
                results[i] = (message, exc)
                continue
        groups.setdefault(request.acquire_slot.group(message.campaign.id), []).append(i)
    for indexes in groups.values():
        lead = indexes[0]
        try:
            tries = requests[lead].acquire_slot.take_many([messages[i].segments for i in indexes], messages[lead].campaign.id)
        except Exception:  # noqa: BLE001 - the limiter is unreachable: each send finds out on its own try
            continue
        for i, first in zip(indexes, tries):
            results[i] = (messages[i], first)
    return results


def _loaded(row: message_types.Claimed) -> LoadedMessage:
    return LoadedMessage(
        id=row.id, status=MessageStatus.SENDING, to_phone=row.to_phone, body=row.body, segments=row.segments,
        sending_at=None,
        campaign=SimpleNamespace(id=row.campaign_id, status=CampaignStatus.SENDING, time_zone=row.campaign_zone,
                                 sender=row.campaign_sender),
        customer=SimpleNamespace(id=row.customer_id, time_zone=row.customer_zone),
    )


_claims = Combiner(claim_rendered_many)
