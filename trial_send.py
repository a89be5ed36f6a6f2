"""A test send (``campaign test ID --to +1...``): one message, rendered exactly as one
customer's message of the campaign would be, sent to the operator's own number under the
campaign's rate limit, and counted nowhere.

- **Whose message**: the customer given (``--customer N``), else the first customer of the
  campaign's audience (lowest id) who would get a message (subscribed, a valid number, a QR
  code), else a built one named "Sample Customer" (an empty list, a draft with no audience
  yet). The text is the fan-out's: the same template, placeholders, footer and a short link
  of the same length, drawn for the test (a code no message or QR code has), so its
  encoding and segments are the customer's message's.
- **Counted nowhere**: no ``Message`` row, so nothing the analytics, the status, the
  export, the dispatcher or a retry reads; the short link is no message's, so a click on
  it is credited to no campaign. The send is kept as a ``TrialSend`` row (the number, the
  text, Twilio's SID or the error): what was sent to whom stays on record, apart from the
  campaign's figures and from the ``event`` table, which says what went wrong.
- **Same rate limit**: ``acquire_slot(segments)`` takes the slot from the windows the
  campaign's sends take theirs from (``actors.campaign_ops.slot_taker``).
- Works in every state of the campaign, a draft included; the number must be in E.164
  (``+12125550100``) and not on the suppression list.
"""

from __future__ import annotations

import re
from typing import Callable

import consent
from audience import Audience
from campaigns import Refused, check_action
from errors import CampaignError, InvalidPhone
from fanout import customer_batches
from link_codes import unused_codes
from models import Customer, TrialSend
import senders
from rendering import check_campaign, compose_message, eligibility, used_attributes
from sms import SmsLength, mask_phone, normalize_phone
from smsservice import SmsBackend

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

SAMPLE_NAME = ("Sample", "Customer")


def operator_number(to: str) -> str:
    """``to`` if it is a valid phone number written in E.164; else Refused, the number masked."""
    text = (to or "").strip()
    try:
        if not _E164.fullmatch(text):
            raise InvalidPhone("not E.164")
        return normalize_phone(text)
    except InvalidPhone:
        raise Refused(f"--to {mask_phone(text)} is not a phone number in E.164 form, such as +12125550100",
                      code="invalid_phone") from None


def pick_customer(campaign, *, customer_id: int | None, default_region: str) -> tuple[Customer, str]:
    """The customer whose message the test shows, and how they were chosen (for the operator)."""
    if customer_id is not None:
        customer = Customer.get_or_none(Customer.id == customer_id)
        if customer is None:
            raise Refused(f"customer {customer_id} does not exist", code="customer_not_found")
        return customer, f"customer {customer_id}"
    for batch in customer_batches(200, Audience.of(campaign).condition()):
        for customer, qr_code in batch:
            if eligibility(customer, qr_code, default_region, used_attributes(campaign))[1] is None:
                return customer, f"customer {customer.id} (the first of the audience who would get it)"
    return Customer(first_name=SAMPLE_NAME[0], last_name=SAMPLE_NAME[1]), "a sample customer (no one in the audience would get it)"


def render_test(campaign, customer: Customer, *, short_url_base: str) -> tuple[str, SmsLength, str]:
    """(text, length, link code) of the customer's message, with a short link drawn for the
    test; the template's errors as the fan-out would find them."""
    check_campaign(campaign, short_url_base)
    code = unused_codes(1)[0]
    body, length = compose_message(campaign, customer, code, short_url_base)
    return body, length, code


def send_test(campaign_id: int, *, to: str, customer_id: int | None = None, backend: SmsBackend,
              acquire_slot: Callable[[int], None], short_url_base: str, default_region: str = "US") -> TrialSend:
    """Send the test and record it (see the module). Returns the ``TrialSend`` row (status
    ``sent`` with its SID); raises ``Refused`` for a bad number, customer or campaign, the
    template's ``PermanentError``, and the send's own error after recording it ``failed``."""
    campaign = check_action(campaign_id, "test")
    number = operator_number(to)
    if consent.suppressed([number]):
        raise Refused(f"{mask_phone(number)} opted out (suppression list): it is not texted, not even a test",
                      code="suppressed")
    customer, _how = pick_customer(campaign, customer_id=customer_id, default_region=default_region)
    body, length, code = render_test(campaign, customer, short_url_base=short_url_base)
    row = TrialSend(campaign_id=campaign_id, customer_id=customer.id, to_phone=number, body=body, link_code=code,
                    segments=length.segments)
    acquire_slot(length.segments)
    try:
        sent = backend.send(to=number, body=body, sender=senders.of(campaign))
    except CampaignError as exc:
        row.status, row.error_code, row.reason = "failed", exc.code, exc.reason
        row.save()
        raise
    row.status, row.twilio_sid, row.segments = "sent", sent.sid, sent.segments or length.segments
    row.save()
    return row
