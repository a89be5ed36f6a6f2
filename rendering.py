"""One customer's message as the fan-out renders it: who is eligible, the placeholders'
values, and the check that a campaign's template can fit at all."""

from __future__ import annotations

from limits import parse as parse_limit

from errors import InvalidPhone, MessageTooLong, PermanentError, TemplateError
from links import SAMPLE_LINK_CODE, short_url
from message_state import SkipReason
from models import Campaign, Customer
from sms import compose, normalize_phone, template_fields, validate_template


def template_values(customer: Customer, link_code: str | None, short_url_base: str) -> dict[str, str]:
    """The placeholders' values for one customer's message, whose short link has ``link_code``."""
    first, last = customer.first_name or "", customer.last_name or ""
    return {
        "first_name": first,
        "last_name": last,
        "name": f"{first} {last}".strip(),
        "short_url": short_url(short_url_base, link_code) if link_code else "",
    }


def eligibility(customer: Customer, qr_code: str | None, default_region: str) -> tuple[str | None, str | None, str | None]:
    """(E.164 phone, skip code, skip reason) for one customer; the code is None if eligible."""
    if not customer.sms_subscribed:
        return None, SkipReason.UNSUBSCRIBED, "customer is not subscribed to SMS"
    try:
        phone = normalize_phone(customer.phone, default_region)
    except InvalidPhone as exc:
        return None, exc.code, exc.reason
    if not qr_code:
        return phone, SkipReason.NO_QR_CODE, "customer has no QR code"
    return phone, None, None


def check_campaign(campaign: Campaign, short_url_base: str) -> None:
    """Raise TemplateError/MessageTooLong/PermanentError if no customer could ever get
    this campaign."""
    if campaign.rate_limit:
        try:
            item = parse_limit(campaign.rate_limit)
        except ValueError:
            item = None
        if item is None or item.amount < 1:
            raise PermanentError(f"campaign rate limit {campaign.rate_limit!r} is not a limit such as '5/minute'", code="bad_rate_limit")
    validate_template(campaign.template)
    if "short_url" not in template_fields(campaign.template):
        # The link is what leads to the QR-code page, and what makes each message's text its
        # own (reconciliation at Twilio tells two messages to one number apart by it).
        raise TemplateError("the template must contain {short_url}, the link to the customer's QR-code page",
                            code="invalid_template")
    empty = {"first_name": "", "last_name": "", "name": "", "short_url": short_url(short_url_base, SAMPLE_LINK_CODE)}
    try:
        compose(campaign.template, empty)
    except MessageTooLong as exc:
        raise MessageTooLong(f"the template cannot fit in one SMS even with an empty name: {exc.reason}", code=exc.code) from None
