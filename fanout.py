"""The fan-out: check a campaign, then record one row per customer, each eligible one with
its message rendered and a short link of its own, streaming the customers in batches."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from peewee import JOIN, IntegrityError, fn

import consent
import landlines
from audience import Audience, recently_texted
import message_state
import senders
from message_types import SkipReason
from campaigns import fail_campaign
from errors import MessageTooLong, PermanentError, TemplateError
from events import record_event
from link_codes import unused_codes
from models import (Campaign, CampaignStatus, Customer, MessageStatus, QRCode, database, db_datetime, is_postgres,
                    utcnow, write_transaction)
from quiet import recipient_zone
from rendering import check_campaign, compose_message, eligibility, used_attributes

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
    token: str | None = None,
    frequency_cap_h: int | None = None,
    default_sender: str | None = None,
) -> FanOutResult:
    """Check the campaign, then record every customer's outcome row.

    A draft (or a due scheduled campaign) is started by the first fan-out that moves it to
    ``sending``; any other copy finds it started and does nothing. A campaign already
    ``sending`` is fanned out again only by the holder of its current dispatch ``token``
    (the start of a due scheduled campaign, or a sweeper restarting a stalled fan-out).
    ``on_started(token)`` is called once the campaign is sending and before any row is
    written, so that the dispatcher (which enqueues the sends, paced) starts at once.
    Customers stream in keyset-paginated batches, so memory does not grow with the
    campaign, and rows are inserted with ON CONFLICT DO NOTHING, so running this again
    creates nothing twice. Only the campaign's audience (``audience.py``) is targeted;
    ``frequency_cap_h`` (the campaign's own, if it has one) skips numbers texted lately.
    A campaign without a sender is given ``default_sender`` before it starts (``senders.py``).
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
    if campaign.status == CampaignStatus.SENDING and (token is None or token != campaign.dispatch_token):
        logger.info("campaign %s is already started: this copy of its fan-out does nothing", campaign_id)
        result.status = "already_started"
        return result
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        fail_campaign(campaign_id, exc.reason)
        result.status = CampaignStatus.FAILED
        return result

    if senders.of(campaign) is None:
        senders.fix_on_campaign(campaign_id, default_sender)
    if campaign.status == CampaignStatus.SENDING:
        started = Campaign.update(heartbeat_at=utcnow(), fanout_beat_at=utcnow()).where(
            Campaign.id == campaign_id, Campaign.status == CampaignStatus.SENDING, Campaign.dispatch_token == token).execute()
    else:
        token = uuid.uuid4().hex
        started = (
            Campaign.update(
                status=CampaignStatus.SENDING, started_at=fn.COALESCE(Campaign.started_at, utcnow()),
                dispatch_token=token, heartbeat_at=utcnow(), fanout_beat_at=utcnow(),
            )
            .where(Campaign.id == campaign_id, Campaign.status.in_([CampaignStatus.DRAFT, CampaignStatus.SCHEDULED]))
            .execute()
        )
    if not started:
        result.status = "already_started"
        return result
    if campaign.status != CampaignStatus.SENDING:
        # What it sends is what the row holds once it is sending: an edit of the draft may have
        # landed between the read above and the start (``campaign_drafts.edit_draft``, checked there).
        campaign = Campaign.get_by_id(campaign_id)
    result.dispatch_token = token
    on_started(token)
    zones = set(campaign.recipient_zones())
    rules = Rules.of(campaign, frequency_cap_h)
    for batch in customer_batches(batch_size, Audience.of(campaign).condition()):
        result.recorded += _record_outcomes(campaign, batch, default_region, short_url_base, default_time_zone, zones, rules)
        beat = Campaign.update(fanout_beat_at=utcnow()).where(Campaign.id == campaign_id, Campaign.dispatch_token == token)
        if not beat.execute():
            # A restart gave the campaign a new token (and a fan-out of its own): this one
            # stops here, so that two fan-outs of one campaign never run on side by side.
            logger.info("campaign %s: fan-out superseded by a restart; stopping", campaign_id)
            result.status = "superseded"
            return result
    Campaign.update(fanout_done_at=utcnow()).where(Campaign.id == campaign_id, Campaign.fanout_done_at.is_null()).execute()
    result.status = CampaignStatus.SENDING
    return result


@dataclass(frozen=True)
class Rules:
    """The exclusions a campaign applies beyond a customer's own eligibility."""

    frequency_cap_h: int = 0

    @classmethod
    def of(cls, campaign: Campaign, default_frequency_cap_h: int | None) -> "Rules":
        cap = campaign.frequency_cap_h if campaign.frequency_cap_h is not None else default_frequency_cap_h
        return cls(cap or 0)


def customer_batches(batch_size: int, condition=True) -> Iterable[list[tuple[Customer, str | None]]]:
    """The customers who meet ``condition`` (an audience's), in batches by id."""
    last_id = 0
    while True:
        rows = list(
            Customer.select(Customer, QRCode.code)
            .join(QRCode, JOIN.LEFT_OUTER, on=(QRCode.customer == Customer.id))
            .where(Customer.id > last_id, condition)
            .order_by(Customer.id)
            .limit(batch_size)
            .objects()
        )
        if not rows:
            return
        yield [(row, row.code) for row in rows]
        last_id = rows[-1].id


#: The first key of the fan-out's PostgreSQL advisory lock (the second is the campaign id).
_FANOUT_LOCK = 7_300_001

#: A batch whose fresh link codes collide with existing ones is rendered again this often.
_LINK_CODE_TRIES = 5


def _record_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str,
                     short_url_base: str, default_time_zone: str, zones: set[str], rules: Rules = Rules()) -> int:
    """Insert the batch's rows; an eligible customer's message is rendered here, once, with a
    short link of its own, so the send path only claims it, and a message too long for one
    segment fails at once. A row that exists (an earlier run) is kept as it is."""
    if not batch:
        return 0
    for attempt in range(_LINK_CODE_TRIES):
        try:
            with write_transaction():
                # The exclusions (suppressed, one per number, ...) are read under the lock the
                # rows are written under: on SQLite the write lock (IMMEDIATE), on PostgreSQL a
                # lock per campaign, so two fan-outs' batches cannot both give one number a row.
                if is_postgres():
                    database.execute_sql("SELECT pg_advisory_xact_lock(%s, %s)", (_FANOUT_LOCK, campaign.id))
                rows = _render_outcomes(campaign, batch, default_region, short_url_base, default_time_zone, rules)
                batch_zones = {row[-1] for row in rows if row[-1]}
                if batch_zones - zones:
                    # With the rows, so that no row's zone is missing from the campaign's list;
                    # read again under the lock, so that two fan-outs add to it, not overwrite.
                    current = Campaign.select(Campaign.zones).where(Campaign.id == campaign.id)
                    current = (current.for_update() if is_postgres() else current).get()  # SQLite: IMMEDIATE locks
                    zones |= set(current.recipient_zones()) | batch_zones
                    Campaign.update(zones=json.dumps(sorted(zones))).where(Campaign.id == campaign.id).execute()
                message_state.insert_outcomes(rows)
                _store_e164(batch, rows)
            return len(rows)
        except IntegrityError:
            # A link code drawn by a fan-out running at the same time (the codes in use were
            # avoided), or a customer deleted meanwhile: render the batch again.
            if attempt == _LINK_CODE_TRIES - 1:
                raise
    return 0


def _store_e164(batch: list[tuple[Customer, str | None]], rows: list[tuple]) -> None:
    """A customer's number in E.164, where it was not stored yet (rows from before imports
    wrote it), in one statement: a STOP from that number then finds the customer by it."""
    stored = {customer.id: customer.phone_e164 for customer, _ in batch}
    stale = [(row[1], row[3]) for row in rows if row[3] and stored.get(row[1]) != row[3]]
    if not stale:
        return
    p = database.param
    cases = " ".join([f"WHEN {p} THEN {p}"] * len(stale))
    database.execute_sql(
        f'UPDATE "customer" SET "phone_e164" = CASE "id" {cases} END WHERE "id" IN ({", ".join([p] * len(stale))})',
        [value for pair in stale for value in pair] + [customer_id for customer_id, _ in stale],
    )


def exclusions(campaign_id: int, checked: list[tuple], rules: Rules, owner: dict[str, int] | None = None) -> list[tuple]:
    """Skip the customers whose number is suppressed (it opted out, whichever row it was on),
    whose number another customer of the campaign already has a message for (the first by
    id keeps it: one person, one message), or whose number a campaign texted within the
    frequency cap. ``owner`` (number -> customer id) carries the numbers taken by earlier
    batches that wrote nothing (a preview); the fan-out finds them among its rows."""
    phones = sorted({phone for _c, _q, (phone, skip_code, _r) in checked if phone and not skip_code})
    stopped = consent.suppressed(phones)
    fixed = landlines.known(phones)
    capped = recently_texted(phones, hours=rules.frequency_cap_h, now=utcnow(), other_than=campaign_id)
    owner = {} if owner is None else owner
    if phones:
        p = database.param
        rows = database.execute_sql(
            f'SELECT "to_phone", "customer_id" FROM "message" WHERE "campaign_id" = {p} AND "status" <> {p} '
            f'AND "to_phone" IN ({", ".join([p] * len(phones))})', [campaign_id, MessageStatus.SKIPPED, *phones])
        for phone, customer_id in rows.fetchall():
            owner.setdefault(phone, customer_id)  # a row of an earlier run owns its number
    result = []
    for customer, qr_code, (phone, skip_code, skip_reason) in checked:
        if phone and not skip_code:
            if phone in stopped:
                skip_code, skip_reason = SkipReason.SUPPRESSED, "the number opted out (suppression list)"
            elif phone in fixed:
                skip_code, skip_reason = SkipReason.LANDLINE, "the number does not take SMS (a landline, or unreachable)"
            elif phone in capped:
                skip_code = SkipReason.FREQUENCY_CAP
                skip_reason = f"the number was texted in the last {rules.frequency_cap_h} h (frequency cap)"
            elif owner.setdefault(phone, customer.id) != customer.id:
                skip_code = SkipReason.DUPLICATE_PHONE
                skip_reason = (f"customer {owner[phone]} of this campaign has the same number" if owner[phone] is not None
                               else "a deleted customer of this campaign had the same number")
        result.append((customer, qr_code, (phone, skip_code, skip_reason)))
    return result


def _render_outcomes(campaign: Campaign, batch: list[tuple[Customer, str | None]], default_region: str,
                     short_url_base: str, default_time_zone: str, rules: Rules) -> list[tuple]:
    now = db_datetime(utcnow())
    rows = []
    needs = used_attributes(campaign)
    checked = exclusions(campaign.id, [(customer, qr_code, eligibility(customer, qr_code, default_region, needs))
                                        for customer, qr_code in batch], rules)
    codes = iter(unused_codes(sum(1 for _c, _q, (_p, skip_code, _r) in checked if not skip_code)))
    for customer, qr_code, (phone, skip_code, skip_reason) in checked:
        status, body, encoding, segments, link_code, zone_name = MessageStatus.PENDING, None, None, None, None, None
        if skip_code:
            status = MessageStatus.SKIPPED
        else:
            zone_name = recipient_zone(phone, customer_zone=customer.time_zone, campaign_zone=campaign.time_zone,
                                       default_zone=default_time_zone).key
            link_code = next(codes)
            try:
                body, length = compose_message(campaign, customer, link_code, short_url_base, needs)
                encoding, segments = length.encoding, length.segments
            except (TemplateError, MessageTooLong) as exc:
                status, skip_code, skip_reason, link_code = MessageStatus.FAILED, exc.code, exc.reason, None
        rows.append((campaign.id, customer.id, status, phone, body, encoding, segments, skip_code, skip_reason, 0, 0, now, now,
                     link_code, zone_name))
    return rows
