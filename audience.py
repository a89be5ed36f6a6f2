"""Who a campaign targets: customers by tags (all of, any of, none of), and a frequency cap
(nobody whose number any campaign texted in the last N hours).

The tag rules narrow the audience (customers outside it get no row: they were never
targeted); the frequency cap is an exclusion with a reason (the row is ``skipped``), so the
campaign's figures say who was left out and why.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from peewee import Expression

from models import Campaign, Customer, CustomerTag, Message, MessageStatus


@dataclass(frozen=True)
class Audience:
    all_of: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()

    @classmethod
    def of(cls, campaign: Campaign) -> "Audience":
        data = json.loads(campaign.audience) if campaign.audience else {}
        return cls(tuple(data.get("all", ())), tuple(data.get("any", ())), tuple(data.get("none", ())))

    @classmethod
    def parse(cls, *, all_of=(), any_of=(), none_of=()) -> "Audience":
        """Tags as an operator gives them (any case, spaces around); ValueError if a tag is
        empty or a tag is both required and excluded."""
        def clean(tags) -> tuple[str, ...]:
            cleaned = tuple(sorted({" ".join(tag.split()).lower() for tag in tags}))
            if any(not tag or len(tag) > 64 for tag in cleaned):
                raise ValueError("a tag is 1 to 64 characters")
            return cleaned

        audience = cls(clean(all_of), clean(any_of), clean(none_of))
        both = set(audience.none_of) & (set(audience.all_of) | set(audience.any_of))
        if both:
            raise ValueError(f"tag {sorted(both)[0]!r} is both targeted and excluded")
        return audience

    def to_json(self) -> str | None:
        if not (self.all_of or self.any_of or self.none_of):
            return None
        return json.dumps({"all": list(self.all_of), "any": list(self.any_of), "none": list(self.none_of)})

    def condition(self) -> Expression | bool:
        """A condition on ``Customer`` that holds for the audience's members."""
        def tagged(tags) -> Expression:
            return CustomerTag.select(CustomerTag.customer).where(CustomerTag.tag.in_(list(tags)))

        condition = True
        for tag in self.all_of:
            member = Customer.id.in_(CustomerTag.select(CustomerTag.customer).where(CustomerTag.tag == tag))
            condition = member if condition is True else condition & member
        for tags, keep in ((self.any_of, True), (self.none_of, False)):
            if tags:
                member = Customer.id.in_(tagged(tags)) if keep else Customer.id.not_in(tagged(tags))
                condition = member if condition is True else condition & member
        return condition

    def describe(self) -> str:
        parts = [f"all of {', '.join(self.all_of)}"] if self.all_of else []
        parts += [f"any of {', '.join(self.any_of)}"] if self.any_of else []
        parts += [f"none of {', '.join(self.none_of)}"] if self.none_of else []
        return "; ".join(parts) or "every customer"


def recently_texted(numbers: list[str], *, hours: int, now: dt.datetime, other_than: int) -> set[str]:
    """The numbers of ``numbers`` that any campaign but ``other_than`` texted in the last
    ``hours`` hours."""
    if not numbers or hours <= 0:
        return set()
    since = now - dt.timedelta(hours=hours)
    rows = (Message.select(Message.to_phone)
            .where(Message.to_phone.in_(numbers), Message.status == MessageStatus.SENT, Message.sent_at >= since,
                   Message.campaign != other_than)
            .distinct().tuples())
    return {phone for (phone,) in rows}
