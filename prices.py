"""What a segment costs by destination country, for the preview's estimate.

``SMS_SEGMENT_PRICE`` is the price of a segment to the US (and to any country of the
``SMS_PRICES`` list's ``*`` entry, when given); ``SMS_PRICES`` lists the others as
``FR=0.0725,GB=0.0400,*=0.05``. A country without a price is not guessed: the preview
counts its segments and says that their cost is unknown, rather than pricing a French
list at the US rate (a tenth of its cost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import phonenumbers

from sms import parsed_phone

_ENTRY = re.compile(r"^\s*([A-Za-z]{2}|\*)\s*=\s*([0-9]+(?:\.[0-9]+)?)\s*$")


def parse_prices(text: str) -> dict[str, float]:
    """``FR=0.0725,GB=0.04`` as {"FR": 0.0725, "GB": 0.04}; ValueError naming the bad entry."""
    prices: dict[str, float] = {}
    for entry in filter(str.strip, (text or "").split(",")):
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{entry.strip()[:30]!r} is not COUNTRY=PRICE, e.g. FR=0.0725")
        country, price = match.group(1).upper(), float(match.group(2))
        if country != "*" and country not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{country!r} is not a country code such as FR or GB")
        if price > 10:
            raise ValueError(f"{entry.strip()[:30]!r}: a segment costs at most 10")
        prices[country] = price
    return prices


def prices_ok(text: str) -> bool:
    try:
        parse_prices(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class PriceTable:
    """Prices per segment by country (ISO 3166 alpha-2).

    Parameters:
      us: the price of a US segment (``SMS_SEGMENT_PRICE``).
      others: the other countries' (``SMS_PRICES``), ``*`` for every country not listed.
    """

    us: float = 0.0
    others: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, settings) -> "PriceTable":
        return cls(us=settings.sms_segment_price, others=parse_prices(settings.sms_prices))

    def price(self, country: str) -> float | None:
        """The price of one segment to ``country``; None when it is not known."""
        if country in self.others:
            return self.others[country]
        if country == "US":
            return self.us
        return self.others.get("*")


def country_of(e164: str) -> str:
    """The country (region code) of an E.164 number, "ZZ" if phonenumbers cannot tell."""
    try:
        return phonenumbers.region_code_for_number(parsed_phone(e164)) or "ZZ"
    except phonenumbers.NumberParseException:
        return "ZZ"


__all__ = ["PriceTable", "country_of", "parse_prices", "prices_ok"]
