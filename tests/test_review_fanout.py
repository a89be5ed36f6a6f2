"""Second reader's findings: two messages to one number in one campaign."""

from __future__ import annotations


import fanout
from audience import Audience
from models import Campaign, Customer, CustomerTag, Message, MessageStatus
from tests.factories import make_campaign, make_customers

BASE = "https://x.test/q"
NUMBER = "+12125550151"


def _open_rows_for(campaign_id: int, phone: str) -> list[int]:
    return sorted(m.customer_id for m in Message.select().where(
        Message.campaign == campaign_id, Message.to_phone == phone, Message.status == MessageStatus.PENDING))


def test_review_a_restarted_fan_out_texts_a_number_twice_when_a_lower_id_joins_the_batch(db):
    # Given two customers with one number; only the second is vip, and a campaign to vip
    a, b = make_customers(2)
    Customer.update(phone=NUMBER).where(Customer.id == a).execute()
    Customer.update(phone="212-555-0151").where(Customer.id == b).execute()
    CustomerTag.create(customer=b, tag="vip")
    campaign_id = make_campaign()
    Campaign.update(audience=Audience.parse(all_of=["vip"]).to_json()).where(Campaign.id == campaign_id).execute()
    result = fanout.fan_out(campaign_id, short_url_base=BASE)
    assert _open_rows_for(campaign_id, NUMBER) == [b]

    # When the first customer joins the audience, and the sweeper restarts the fan-out
    # (the holder of the campaign's token) while the message to the number is still pending
    CustomerTag.create(customer=a, tag="vip")
    fanout.fan_out(campaign_id, short_url_base=BASE, token=result.dispatch_token)

    # Then the number still has one message in the campaign (the other row duplicate_phone)
    assert _open_rows_for(campaign_id, NUMBER) == [b], "two messages to one number in one campaign"


def test_review_a_customer_deleted_between_batches_takes_the_numbers_message_with_it(db):
    # Given two customers with one number, in two batches of the fan-out
    a, b = make_customers(2)
    Customer.update(phone=NUMBER).where(Customer.id.in_([a, b])).execute()
    campaign_id = make_campaign()
    Campaign.update(status="sending", dispatch_token="t" * 32).where(Campaign.id == campaign_id).execute()
    campaign = Campaign.get_by_id(campaign_id)
    batches = fanout.customer_batches(1)

    # When the first batch is recorded (the first customer gets the number's message, which
    # is then sent), the first customer is deleted (a merge of duplicates), then the second
    # batch is recorded
    fanout._record_outcomes(campaign, next(batches), "US", BASE, "America/New_York", set())
    Message.update(status=MessageStatus.SENT, twilio_sid="SM" + "5" * 32).where(Message.customer == a).execute()
    Customer.delete().where(Customer.id == a).execute()
    fanout._record_outcomes(campaign, next(batches), "US", BASE, "America/New_York", set())

    # Then the number, already texted in this campaign, gets no second message
    assert _open_rows_for(campaign_id, NUMBER) == [], "the number is texted a second time in the campaign"


def test_a_fan_out_whose_token_a_restart_replaced_stops_at_its_next_batch(db):
    # Given three customers, and a restart that gives the campaign a new token as soon as
    # this fan-out has started (the sweeper took it for stalled)
    make_customers(3)
    campaign_id = make_campaign()

    def restarted(token):
        Campaign.update(dispatch_token="a-restart").where(Campaign.id == campaign_id).execute()

    # When it fans out in batches of one
    result = fanout.fan_out(campaign_id, short_url_base=BASE, batch_size=1, on_started=restarted)

    # Then it stops after its first batch, leaving the rest to the restart's own fan-out
    assert result.status == "superseded" and result.recorded == 1
    assert Message.select().where(Message.campaign == campaign_id).count() == 1


def test_a_sweep_restarts_the_fan_out_with_a_stalled_dispatcher_when_the_fan_out_is_not_done(db):
    # Given a sending campaign whose dispatcher went quiet while its fan-out is not done
    import datetime as dt

    import campaigns
    from models import CampaignStatus, utcnow

    campaign_id = make_campaign()
    long_ago = utcnow() - dt.timedelta(hours=1)
    Campaign.update(status=CampaignStatus.SENDING, dispatch_token="old", heartbeat_at=long_ago,
                    fanout_beat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    fan_outs, dispatches = [], []

    # When the sweeper looks
    campaigns.sweep(stale_after_s=lambda campaign: 60, restart_fan_out=lambda cid, token: fan_outs.append(cid),
                    restart_dispatch=lambda cid, token: dispatches.append(cid), request_metrics=lambda cid: None)

    # Then the fan-out is restarted (which starts a dispatcher), not the dispatcher alone
    assert (fan_outs, dispatches) == ([campaign_id], [])


def test_a_deleted_customers_messages_stay_as_the_campaigns_record(db):
    # Given a campaign with one message sent and one pending
    a, b = make_customers(2)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    Message.update(status=MessageStatus.SENT, twilio_sid="SM" + "6" * 32).where(Message.customer == a).execute()

    # When both customers are deleted
    Customer.delete().where(Customer.id.in_([a, b])).execute()

    # Then both rows are still there, without their customer, with their outcomes
    rows = sorted((m.status, m.customer_id) for m in Message.select().where(Message.campaign == campaign_id))
    assert rows == [(MessageStatus.PENDING, None), (MessageStatus.SENT, None)]
