"""The preview's view of message length: how many messages each overflow policy would
fail, how many smart encoding and transliteration change, who would fail, and the cost by
destination country."""

from __future__ import annotations

from dataclasses import dataclass, field

from errors import MessageTooLong
from overflow import FitRules, fit
from prices import PriceTable, country_of
from segments import SmsLength
from smart_encoding import smart_encode
from sms import mask_phone

#: The policies the preview compares the campaign's own with.
COMPARED = ("fail", "transliterate", "segments:2", "segments:3")


@dataclass
class CountryCost:
    messages: int = 0
    segments: int = 0
    price: float | None = None

    @property
    def cost(self) -> float | None:
        return None if self.price is None else round(self.segments * self.price, 4)


@dataclass
class FitTally:
    """Counts over one preview.

    Parameters:
      rules: the campaign's own rules (what the messages are sent under).
      prices: the price of a segment by country.
      samples: how many customers who would fail to list.
    """

    rules: FitRules
    prices: PriceTable = field(default_factory=PriceTable)
    samples: int = 5
    #: policy -> messages that would fail too_long under it (with the campaign's smart encoding).
    failing_under: dict[str, int] = field(default_factory=dict)
    changed_by_smart_encoding: int = 0
    changed_by_transliteration: int = 0
    failing: list[dict] = field(default_factory=list)
    by_country: dict[str, CountryCost] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.failing_under = {policy: 0 for policy in dict.fromkeys((*COMPARED, self.rules.on_overflow))}

    def add(self, text: str, *, phone: str, name: str) -> tuple[str, SmsLength] | None:
        """Count one customer's rendered message (footer included, before fitting); the
        text and length it would be sent with under the campaign's rules, or None if it
        would fail."""
        outcome = None
        for policy in self.failing_under:
            try:
                sent, length = fit(text, FitRules(smart_encoding=self.rules.smart_encoding, on_overflow=policy))
            except MessageTooLong as exc:
                self.failing_under[policy] += 1
                if policy == self.rules.on_overflow and len(self.failing) < self.samples:
                    self.failing.append({"to": mask_phone(phone), "name": name, "reason": exc.reason})
                continue
            if policy == self.rules.on_overflow:
                outcome = sent, length
        smart = smart_encode(text) if self.rules.smart_encoding else text
        self.changed_by_smart_encoding += smart != text
        if outcome is not None:
            sent, length = outcome
            self.changed_by_transliteration += sent != smart
            country = self.by_country.setdefault(country_of(phone), CountryCost())
            country.messages += 1
            country.segments += length.segments
        return outcome

    def priced(self) -> dict[str, CountryCost]:
        """The countries with their price (None where unknown), most segments first."""
        for country, cost in self.by_country.items():
            cost.price = self.prices.price(country)
        return dict(sorted(self.by_country.items(), key=lambda item: (-item[1].segments, item[0])))

    @property
    def known_cost(self) -> float:
        return round(sum(c.cost for c in self.priced().values() if c.cost is not None), 4)

    @property
    def unpriced_segments(self) -> int:
        return sum(c.segments for c in self.priced().values() if c.price is None)


__all__ = ["COMPARED", "CountryCost", "FitTally"]
