"""What an operator reads before sending: the preview of a draft (a dry run of the fan-out).
The live status of a running campaign is ``campaign_status.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from audience import Audience
from errors import MessageTooLong, PermanentError
from fanout import Rules, customer_batches, exclusions
from links import new_link_code
from models import Campaign
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
) -> Preview:
    """A dry run: render the campaign for its whole audience, sending nothing and writing
    nothing. Sample messages are exactly what would go out, with a link code made for the
    preview (the fan-out gives each message its own)."""
    campaign = Campaign.get_by_id(campaign_id)
    result = Preview(campaign_id, samples=[], price_per_segment=price_per_segment)
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        result.template_error = exc.reason
    rules, owner = Rules.of(campaign, frequency_cap_h), {}
    for batch in customer_batches(batch_size, Audience.of(campaign).condition()):
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
