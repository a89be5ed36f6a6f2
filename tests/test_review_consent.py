"""Second reader's findings: a number that opted out can still be texted."""

from __future__ import annotations

import consent
import fanout
import message_state
from message_types import SkipReason
from models import Customer, Message, MessageStatus, utcnow
from schema import create_schema
from tests.factories import make_campaign, make_customers

BASE = "https://x.test/q"


def test_review_a_stop_from_the_number_of_a_pending_row_is_texted_when_the_customer_changed_number(db):
    # Given a campaign fanned out: the customer's row is pending, frozen to +12125550131
    [cid] = make_customers(1)
    Customer.update(phone="+12125550131").where(Customer.id == cid).execute()
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    message = Message.get(Message.customer == cid)
    assert (message.status, message.to_phone) == (MessageStatus.PENDING, "+12125550131")
    # and the CRM then gives the customer a new number
    Customer.update(phone="+12125550132", phone_e164="+12125550132").where(Customer.id == cid).execute()

    # When a STOP comes from the old number, the one the pending message goes to
    consent.opt_out("+12125550131", source=consent.Source.INBOUND, keyword="STOP", message_sid="SM" + "7" * 32)
    assert consent.suppressed(["+12125550131"]) == {"+12125550131"}

    # Then the message to the suppressed number must not be claimed for sending
    claimed = message_state.claim_rendered([(message.id, 0)], claimed_at=utcnow())
    assert claimed == [None], f"a message to a suppressed number was claimed for sending: {claimed}"


def test_review_a_21610_recorded_before_the_suppression_list_is_not_put_on_it_by_the_release_phase(db):
    # Given a database of the previous version: customer 0 was failed with Twilio's 21610
    # (the old send path only unsubscribed that row, with no audit row), and customer 1
    # is another row with the same number, still subscribed
    a, b = make_customers(2)
    Customer.update(phone="+12125550141").where(Customer.id.in_([a, b])).execute()
    Customer.update(sms_subscribed=False).where(Customer.id == a).execute()
    earlier = make_campaign(name="earlier")
    Message.create(campaign=earlier, customer=a, status=MessageStatus.FAILED, to_phone="+12125550141",
                   error_code="21610", reason="recipient has opted out (replied STOP)")

    # When the release phase brings the data up ("earlier opt-outs on the suppression list")
    create_schema(default_region="US")

    # Then the number that opted out at Twilio is suppressed, and a new campaign skips it
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    row = Message.get(Message.campaign == campaign_id, Message.customer == b)
    assert (row.status, row.error_code) == (MessageStatus.SKIPPED, SkipReason.SUPPRESSED), (
        f"the number that answered 21610 is texted again: {row.status} {row.error_code}")
