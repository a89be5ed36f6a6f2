"""The fan-out: check a campaign, then record one row per customer, each eligible one with
its message rendered and a short link of its own, streaming the customers in batches."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from peewee import JOIN, IntegrityError, fn

import message_state
from campaigns import fail_campaign
from errors import MessageTooLong, PermanentError, TemplateError
from events import record_event
from links import new_link_code
from models import Campaign, CampaignStatus, Customer, MessageStatus, QRCode, database, db_datetime, utcnow
from quiet import recipient_zone
from rendering import check_campaign, eligibility, template_values
from sms import compose

logger = logging.getLogger(__name__)

@dataclass
class FanOutResult:
    campaign_id: int
    recorded: int = 0  # customers whose row now exists (written now or by an earlier run)
    status: str = ""
    dispatch_token: str | None = None


def fan_out(
    campaign_id: int,
    *,
    short_url_base: str,
    default_region: str = "US",
    default_time_zone: str = "America/New_York",
    batch_size: int = 500,
    on_started: Callable[[str], None] = lambda token: None,
) -> FanOutResult:
    """Check the campaign, then record every customer's outcome row.

    ``on_started(token)`` is called once the campaign is sending and before any row is
    written, so that the dispatcher (which enqueues the sends, paced) starts at once.
    Customers stream in keyset-paginated batches, so memory does not grow with the
    campaign, and rows are inserted with ON CONFLICT DO NOTHING, so running this again
    creates nothing twice.
    """
    result = FanOutResult(campaign_id)
    campaign = Campaign.get_or_none(Campaign.id == campaign_id)
    if campaign is None:
        record_event(campaign_id, "campaign_not_found", f"campaign {campaign_id} does not exist")
        result.status = "not_found"
        return result
    if campaign.status in CampaignStatus.FINISHED or campaign.status == CampaignStatus.PAUSED:
        logger.info("campaign %s is %s: nothing to fan out", campaign_id, campaign.status)
        result.status = campaign.status
        return result
    if campaign.status == CampaignStatus.SCHEDULED and campaign.send_at is not None and campaign.send_at > utcnow():
        result.status = CampaignStatus.SCHEDULED
        return result
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        fail_campaign(campaign_id, exc.reason)
        result.status = CampaignStatus.FAILED
        return result

    token = uuid.uuid4().hex
    (
        Campaign.update(
            status=CampaignStatus.SENDING, started_at=fn.COALESCE(Campaign.started_at, utcnow()),
            dispatch_token=token, heartbeat_at=utcnow(),
        )
        .where(Campaign.id == campaign_id, Campaign.status.in_([CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.SENDING]))
        .execute()
    )
    result.dispatch_token = token
    on_started(token)
    zones = set(campaign.recipient_zones())
    for batch in customer_batches(batch_size):
        result.recorded += _record_outcomes(campaign, batch, default_region, short_url_base, default_time_zone, zones)
        Campaign.update(heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    Campaign.update(fanout_done_at=utcnow()).where(Campaign.id == campaign_id, Campaign.fanout_done_at.is_null()).execute()
    result.status = CampaignStatus.SENDING
    return result


def customer_batches(batch_size: int) -> Iterable[list[tuple[Customer, str | None]]]:
    last_id = 0
    while True:
        rows = list(
            Customer.select(Customer, QRCode.code)
            .join(QRCode, JOIN.LEFT_OUTER, on=(QRCode.customer == Customer.id))
            .where(Customer.id > last_id)
            .order_by(Customer.id)
            .limit(batch_size)
            .objects()
        )
        if not rows:
            return
        yield [(row, row.code) for row in rows]
        last_id = rows[-1].id


#: A batch whose fresh link codes collide with existing ones is rendered again this often.
_LINK_CODE_TRIES = 5


def _record_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str,
                     short_url_base: str, default_time_zone: str, zones: set[str]) -> int:
    """Insert the batch's rows; an eligible customer's message is rendered here, once, with a
    short link of its own, so the send path only claims it, and a message too long for one
    segment fails at once. A row that exists (an earlier run) is kept as it is."""
    if not batch:
        return 0
    for attempt in range(_LINK_CODE_TRIES):
        rows = _render_outcomes(campaign, batch, default_region, short_url_base, default_time_zone)
        new_zones = {row[-1] for row in rows if row[-1]} - zones
        try:
            with database.atomic():
                if new_zones:
                    # With the rows, so that no row's zone is missing from the campaign's list.
                    zones |= new_zones
                    Campaign.update(zones=json.dumps(sorted(zones))).where(Campaign.id == campaign.id).execute()
                message_state.insert_outcomes(rows)
            return len(rows)
        except IntegrityError:
            # Only a link code can collide (the conflict target covers the rest): new codes.
            zones -= new_zones
            if attempt == _LINK_CODE_TRIES - 1:
                raise
    return 0


def _render_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str,
                     short_url_base: str, default_time_zone: str) -> list[tuple]:
    now = db_datetime(utcnow())
    rows = []
    for customer, qr_code in batch:
        phone, skip_code, skip_reason = eligibility(customer, qr_code, default_region)
        status, body, encoding, segments, link_code, zone_name = MessageStatus.PENDING, None, None, None, None, None
        if skip_code:
            status = MessageStatus.SKIPPED
        else:
            zone_name = recipient_zone(phone, customer_zone=customer.time_zone, campaign_zone=campaign.time_zone,
                                       default_zone=default_time_zone).key
            link_code = new_link_code()
            try:
                body, length = compose(campaign.template, template_values(customer, link_code, short_url_base))
                encoding, segments = length.encoding, length.segments
            except (TemplateError, MessageTooLong) as exc:
                status, skip_code, skip_reason, link_code = MessageStatus.FAILED, exc.code, exc.reason, None
        rows.append((campaign.id, customer.id, status, phone, body, encoding, segments, skip_code, skip_reason, 0, 0, now, now,
                     link_code, zone_name))
    return rows
