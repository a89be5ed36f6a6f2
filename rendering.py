"""One customer's message as the fan-out renders it: who is eligible, the placeholders'
values, and the check that a campaign's template can fit at all."""

from __future__ import annotations

import json
import re
from typing import Mapping

from limits import RateLimitItem
from limits import parse as parse_limit
from limits import parse_many
from peewee import CharField, TextField

from errors import InvalidPhone, MessageTooLong, PermanentError, TemplateError
import languages
from links import SAMPLE_LINK_CODE, short_url
from message_types import SkipReason
from models import Campaign, CustomAttribute, Customer
from overflow import FitRules
from quiet import zone
from sms import (SmsLength, append_footer, attribute_fields, compose, normalize_phone, render, template_fields,
                 validate_template)

#: The longest window a campaign's own limit may have. The dispatcher runs every half window
#: and the sweeper waits three of them before it takes a campaign for stalled, so a longer
#: one (a week, a year) would leave a campaign unwatched for that long.
MAX_WINDOW_S = 86_400

#: One limit in ``limits`` notation, read the way ``limits`` reads it, to see the parts it
#: does not keep: a period of 0 (``5 per 0 seconds``), which it takes for 1.
_ONE_LIMIT = re.compile(r"\s*([0-9]+)\s*(?:/|\s*per\s*)\s*([0-9]+)?\s*([a-z]+)\s*", re.IGNORECASE)


def template_values(customer: Customer, link_code: str | None, short_url_base: str,
                    attributes: frozenset[str] = frozenset()) -> dict[str, str]:
    """The placeholders' values for one customer's message, whose short link has ``link_code``,
    with the customer's values of the custom ``attributes`` the template uses."""
    first, last = customer.first_name or "", customer.last_name or ""
    values = {
        "first_name": first,
        "last_name": last,
        "name": f"{first} {last}".strip(),
        "short_url": short_url(short_url_base, link_code) if link_code else "",
    }
    if attributes:
        own = attribute_values(customer)
        values.update((name, own.get(name, "")) for name in attributes)
    return values


def attribute_values(customer) -> dict[str, str]:
    """A customer's custom attributes, from a ``Customer`` or the send path's loaded row."""
    return json.loads(customer.attributes) if getattr(customer, "attributes", None) else {}


def has_values(customer, needs: frozenset[str]) -> bool:
    """Whether ``customer`` has a value for each of the custom attributes ``needs``."""
    own = attribute_values(customer)
    return all(own.get(name) for name in needs)


def declared_attributes() -> frozenset[str]:
    """The custom attributes imports declared: the placeholders a template may use besides
    the built-in ones."""
    return frozenset(a.name for a in CustomAttribute.select(CustomAttribute.name))


def used_attributes(campaign: Campaign) -> frozenset[str]:
    """The declared custom attributes ``campaign``'s template uses (none if it is invalid:
    ``check_campaign`` says why)."""
    try:
        return attribute_fields(campaign.template, declared_attributes())
    except PermanentError:
        return frozenset()


def compose_message(campaign: Campaign, customer: Customer, link_code: str | None, short_url_base: str,
                    needs: frozenset[str] | None = None) -> tuple[str, SmsLength]:
    """One customer's message exactly as it is sent (and stored): the template filled (with
    the custom attributes it ``needs``), the footer of the campaign's language, then made to
    fit under the campaign's rules (``overflow.py``); MessageTooLong/TemplateError as
    ``sms.compose``."""
    needs = used_attributes(campaign) if needs is None else needs
    return compose(campaign.template, template_values(customer, link_code, short_url_base, needs),
                   FitRules.of(campaign), footer=campaign_footer(campaign))


def unfitted_message(campaign: Campaign, customer: Customer, link_code: str | None, short_url_base: str,
                     needs: frozenset[str]) -> tuple[str, dict[str, str]]:
    """The message before it is made to fit (for the preview, which compares the policies),
    and the placeholders' values."""
    values = template_values(customer, link_code, short_url_base, needs)
    return append_footer(render(campaign.template, values), campaign_footer(campaign)), values


def campaign_footer(campaign: Campaign) -> str:
    """The footer of the campaign's language (PermanentError if it has none we know)."""
    try:
        return languages.footer(campaign.language)
    except ValueError as exc:
        raise PermanentError(str(exc), code="invalid_language") from None


def eligibility(customer: Customer, qr_code: str | None, default_region: str,
                needs: frozenset[str] = frozenset()) -> tuple[str | None, str | None, str | None]:
    """(E.164 phone, skip code, skip reason) for one customer; the code is None if eligible.
    ``needs`` are the custom attributes the template uses: a customer without a value for
    one of them is skipped rather than sent a message with a hole in it."""
    if not customer.sms_subscribed:
        return None, SkipReason.UNSUBSCRIBED, "customer is not subscribed to SMS"
    try:  # in the customer's own region when the import said it (a Paris store's "06 12 34 56 78")
        phone = normalize_phone(customer.phone, customer.region or default_region)
    except InvalidPhone as exc:
        return None, exc.code, exc.reason
    if not qr_code:
        return phone, SkipReason.NO_QR_CODE, "customer has no QR code"
    if needs:
        own = attribute_values(customer)
        missing = sorted(name for name in needs if not own.get(name))
        if missing:
            return phone, SkipReason.MISSING_ATTRIBUTE, f"customer has no value for {{{missing[0]}}}"
    return phone, None, None


def campaign_rate_limit(limit: str) -> RateLimitItem:
    """The one limit a campaign's ``rate_limit`` says, exactly as the worker applies it (the
    rate limiter's ``extra_rate_limit``, the dispatcher's pacing: ``ratelimit.py``, which keep
    the first part of a limit only); PermanentError naming what is wrong otherwise."""

    def refuse(why: str) -> PermanentError:
        return PermanentError(f"campaign rate limit {limit!r} {why}", code="bad_rate_limit")

    try:
        items = parse_many(limit)
    except ValueError:
        raise refuse("is not a limit such as '5/minute' or '20 per 2 hours'") from None
    if len(items) > 1:
        raise refuse(f"has {len(items)} parts: a campaign has one limit, such as '5/minute'")
    match = _ONE_LIMIT.fullmatch(limit)
    if match is None:  # what limits parses, this reads too; refused rather than guessed if not
        raise refuse("is not a limit such as '5/minute' or '20 per 2 hours'")
    item = items[0]
    if item.amount < 1:
        raise refuse("allows no message at all: the amount must be at least 1")
    if match.group(2) is not None and int(match.group(2)) == 0:
        raise refuse("has a period of 0: give a period of at least 1, such as '5 per 1 second'")
    if item.get_expiry() > MAX_WINDOW_S:
        raise refuse("has a window longer than a day: give one of at most a day, such as '100/day'")
    return item


def faster_than(limit: str, global_limit: str) -> bool:
    """Whether the campaign's ``limit`` allows more messages per second than ``global_limit``."""
    item, other = parse_limit(limit), parse_limit(global_limit)
    return item.amount * other.get_expiry() > other.amount * item.get_expiry()


def check_draft(campaign: Campaign, short_url_base: str, global_limit: str,
                labels: Mapping[str, str] | None = None) -> None:
    """Raise PermanentError if a new campaign should not be saved: a value longer than its
    column (PostgreSQL would refuse it, SQLite keep it: the same answer on both), text that is
    not UTF-8, an empty name, a rate limit the worker cannot honour or faster than the global
    one (which every message obeys too, so it could never be reached), an unknown time zone,
    a language without a table (``languages.py``), then everything ``check_campaign``
    checks. ``labels`` names the fields in the messages (``{"name": "--name"}``)."""
    labels = labels or {}
    for field in campaign._meta.sorted_fields:
        value = getattr(campaign, field.name)
        if not isinstance(value, str) or not isinstance(field, (CharField, TextField)):
            continue
        label = labels.get(field.name, field.name)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PermanentError(f"{label} is not valid UTF-8 text", code="invalid_text") from None
        if isinstance(field, CharField) and len(value) > field.max_length:
            raise PermanentError(f"{label} is {len(value)} characters long: at most {field.max_length}", code="too_long")
    if not campaign.name or not campaign.name.strip():
        raise PermanentError(f"{labels.get('name', 'name')} is empty", code="invalid_name")
    if campaign.rate_limit is not None:
        campaign_rate_limit(campaign.rate_limit)
        if faster_than(campaign.rate_limit, global_limit):
            raise PermanentError(
                f"campaign rate limit {campaign.rate_limit!r} is faster than the global SMS_RATE_LIMIT {global_limit!r}, "
                "which every message obeys as well: give a slower one, or none to send at the global rate",
                code="bad_rate_limit",
            )
    if campaign.time_zone is not None and zone(campaign.time_zone) is None:
        raise PermanentError(f"{labels.get('time_zone', 'time zone')} {campaign.time_zone!r} is not an IANA time zone "
                             "such as 'America/Chicago'", code="invalid_time_zone")
    if campaign.language is not None and campaign.language not in languages.LANGUAGES:
        raise PermanentError(f"{labels.get('language', 'language')} {campaign.language!r} is not one of "
                             f"{', '.join(sorted(languages.LANGUAGES))}", code="invalid_language")
    check_campaign(campaign, short_url_base)


def check_campaign(campaign: Campaign, short_url_base: str, attributes: frozenset[str] | None = None) -> None:
    """Raise TemplateError/MessageTooLong/PermanentError if no customer could ever get
    this campaign. A placeholder must be built in or one of the custom ``attributes`` an
    import declared (read from the database when not given)."""
    if campaign.rate_limit:
        campaign_rate_limit(campaign.rate_limit)
    footer = campaign_footer(campaign)
    if attributes is None:
        attributes = declared_attributes()
    validate_template(campaign.template, attributes)
    used = attribute_fields(campaign.template, attributes)
    if "short_url" not in template_fields(campaign.template, attributes):
        # The link is what leads to the QR-code page, and what makes each message's text its
        # own (reconciliation at Twilio tells two messages to one number apart by it).
        raise TemplateError("the template must contain {short_url}, the link to the customer's QR-code page",
                            code="invalid_template")
    empty = {"first_name": "", "last_name": "", "name": "", "short_url": short_url(short_url_base, SAMPLE_LINK_CODE),
             **{name: "" for name in used}}
    try:
        compose(campaign.template, empty, FitRules.of(campaign), footer=footer)
    except MessageTooLong as exc:
        raise MessageTooLong(f"the template cannot fit in one SMS even with an empty name: {exc.reason}", code=exc.code) from None
