"""What an operator reads: the preview of a draft (a dry run of the fan-out) and the live
status of a running campaign."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from peewee import fn

from analytics import database_counts
from audience import Audience
from errors import MessageTooLong, PermanentError
from fanout import Rules, customer_batches, exclusions
from links import new_link_code
from models import Campaign, Customer, Message, MessageStatus, utcnow
from rendering import check_campaign, eligibility, template_values
from sms import compose, mask_phone

@dataclass
class Preview:
    campaign_id: int
    samples: list[dict]
    audience: int = 0
    eligible: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    too_long: int = 0
    encodings: dict[str, int] = field(default_factory=dict)
    segments: int = 0
    price_per_segment: float = 0.0
    template_error: str | None = None

    @property
    def estimated_cost(self) -> float:
        return round(self.segments * self.price_per_segment, 4)


def preview(
    campaign_id: int, *, short_url_base: str, default_region: str = "US", samples: int = 3,
    price_per_segment: float = 0.0, batch_size: int = 1000, frequency_cap_h: int | None = None,
    customer_id: int | None = None,
) -> Preview:
    """A dry run: render the campaign for its whole audience, sending nothing and writing
    nothing. Sample messages are exactly what would go out, with a link code made for the
    preview (the fan-out gives each message its own). ``customer_id``: that customer only
    (audience 0 if the campaign does not target them)."""
    campaign = Campaign.get_by_id(campaign_id)
    result = Preview(campaign_id, samples=[], price_per_segment=price_per_segment)
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        result.template_error = exc.reason
    rules, owner = Rules.of(campaign, frequency_cap_h), {}
    condition = Audience.of(campaign).condition()
    if customer_id is not None:
        chosen = Customer.id == customer_id
        condition = chosen if condition is True else chosen & condition
    for batch in customer_batches(batch_size, condition):
        checked = exclusions(campaign_id, [(c, q, eligibility(c, q, default_region)) for c, q in batch], rules, owner)
        for customer, qr_code, (phone, skip_code, _reason) in checked:
            result.audience += 1
            if skip_code:
                result.skipped_by_reason[skip_code] = result.skipped_by_reason.get(skip_code, 0) + 1
                continue
            if result.template_error:
                continue
            try:
                body, length = compose(campaign.template, template_values(customer, new_link_code(), short_url_base))
            except MessageTooLong:
                result.too_long += 1
                continue
            result.eligible += 1
            result.encodings[length.encoding] = result.encodings.get(length.encoding, 0) + 1
            result.segments += length.segments
            if len(result.samples) < samples:
                result.samples.append({"to": mask_phone(phone), "body": body, "encoding": length.encoding, "units": length.units})
    return result


def status_report(campaign_id: int, *, now: dt.datetime | None = None, rate_window_s: int = 300) -> dict:
    """Live figures for an operator: counts straight from the rows, the recent sending
    rate, an ETA and a progress bar."""
    now = now or utcnow()
    campaign = Campaign.get_by_id(campaign_id)
    counts = {status: 0 for status in MessageStatus.ALL}
    counts.update(database_counts(campaign_id))
    delivered = Message.select().where(Message.campaign == campaign_id, Message.delivery_status == "delivered").count()
    recent = Message.select().where(
        Message.campaign == campaign_id, Message.status == MessageStatus.SENT,
        Message.sent_at >= now - dt.timedelta(seconds=rate_window_s),
    ).count()
    total = sum(counts.values())
    pending = counts[MessageStatus.PENDING] + counts[MessageStatus.SENDING]
    done = total - pending
    rate_per_min = recent * 60 / rate_window_s
    eta_s = pending / rate_per_min * 60 if rate_per_min and pending else (0 if not pending else None)
    width = 30
    filled = int(width * done / total) if total else 0
    skipped_by_reason = dict(
        Message.select(Message.error_code, fn.COUNT(Message.id))
        .where(Message.campaign == campaign_id, Message.status == MessageStatus.SKIPPED)
        .group_by(Message.error_code).order_by(Message.error_code).tuples()
    )
    return {
        "campaign_id": campaign_id, "name": campaign.name, "status": campaign.status,
        "status_reason": campaign.status_reason,
        "targeted": total, "sent": counts[MessageStatus.SENT], "failed": counts[MessageStatus.FAILED],
        "skipped": counts[MessageStatus.SKIPPED], "cancelled": counts[MessageStatus.CANCELLED],
        "skipped_by_reason": {str(reason): count for reason, count in skipped_by_reason.items()},
        "audience": Audience.of(campaign).describe(),
        "pending": pending, "delivered": delivered,
        "rate_per_minute": round(rate_per_min, 2), "eta_seconds": None if eta_s is None else int(eta_s),
        "progress": f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
    }
