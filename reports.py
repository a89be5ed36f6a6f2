"""What an operator reads before sending: the preview of a draft (a dry run of the fan-out).
The live status of a running campaign is ``campaign_status.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import senders
from audience import Audience
from errors import PermanentError
from fanout import Rules, customer_batches, exclusions
from links import new_link_code
from models import Campaign, Customer
from rendering import check_campaign, eligibility, unfitted_message, used_attributes
from fit_report import FitTally
from overflow import FitRules
from prices import PriceTable
from sms import mask_phone


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
    #: Length by policy, changes, who would fail, cost by country (``fit_report.py``).
    fit: FitTally | None = None
    #: The campaign's sender, and what Twilio said of it (a ``sender_check.SenderCheck``).
    sender: str | None = None
    sender_check: Any = None

    @property
    def estimated_cost(self) -> float:
        """The cost of the segments whose country has a price (``fit.unpriced_segments`` have none)."""
        return self.fit.known_cost if self.fit is not None else round(self.segments * self.price_per_segment, 4)


def preview(
    campaign_id: int, *, short_url_base: str, default_region: str = "US", samples: int = 3,
    price_per_segment: float = 0.0, batch_size: int = 1000, frequency_cap_h: int | None = None,
    prices: PriceTable | None = None,
    check_sender: Callable[[str | None], Any] | None = None,
    customer_id: int | None = None,
) -> Preview:
    """A dry run: render the campaign for its whole audience, sending nothing and writing
    nothing. Sample messages are exactly what would go out, with a link code made for the
    preview (the fan-out gives each message its own). ``prices`` by country (else
    ``price_per_segment`` for every country); ``check_sender(sender)`` asks Twilio whether
    it knows the campaign's sender (``sender_check.check_sender``); ``customer_id``: that
    customer only (audience 0 if the campaign does not target them)."""
    campaign = Campaign.get_by_id(campaign_id)
    result = Preview(campaign_id, samples=[], price_per_segment=price_per_segment, sender=senders.of(campaign))
    if check_sender is not None:
        result.sender_check = check_sender(result.sender)
    prices = prices or PriceTable(us=price_per_segment, others={"*": price_per_segment})
    result.fit = tally = FitTally(FitRules.of(campaign), prices)
    try:
        check_campaign(campaign, short_url_base)
    except PermanentError as exc:
        result.template_error = exc.reason
    rules, owner, needs = Rules.of(campaign, frequency_cap_h), {}, used_attributes(campaign)
    condition = Audience.of(campaign).condition()
    if customer_id is not None:
        chosen = Customer.id == customer_id
        condition = chosen if condition is True else chosen & condition
    for batch in customer_batches(batch_size, condition):
        checked = exclusions(campaign_id, [(c, q, eligibility(c, q, default_region, needs)) for c, q in batch], rules, owner)
        for customer, qr_code, (phone, skip_code, _reason) in checked:
            result.audience += 1
            if skip_code:
                result.skipped_by_reason[skip_code] = result.skipped_by_reason.get(skip_code, 0) + 1
                continue
            if result.template_error:
                continue
            text, values = unfitted_message(campaign, customer, new_link_code(), short_url_base, needs)
            outcome = tally.add(text, phone=phone, name=values["name"])
            if outcome is None:
                result.too_long += 1
                continue
            body, length = outcome
            result.eligible += 1
            result.encodings[length.encoding] = result.encodings.get(length.encoding, 0) + 1
            result.segments += length.segments
            if len(result.samples) < samples:
                result.samples.append({"to": mask_phone(phone), "body": body, "encoding": length.encoding,
                                       "units": length.units, "segments": length.segments})
    return result
