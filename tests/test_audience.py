"""A campaign to an audience (``audience.py``): exactly the tag's members, nobody excluded
by a tag, nobody texted within the frequency cap, every exclusion with its reason."""

from __future__ import annotations

import datetime as dt

import pytest

import fanout
from audience import Audience
from message_types import SkipReason
from models import Campaign, CustomerTag, Message, MessageStatus, utcnow
from reports import preview
from tests.factories import make_campaign, make_customers, phone_for

BASE = "https://x.test/q"


def _tag(customer_ids, tag):
    CustomerTag.insert_many([(cid, tag) for cid in customer_ids], fields=[CustomerTag.customer, CustomerTag.tag]).execute()


def test_a_campaign_to_a_tag_reaches_its_members_minus_the_excluded_and_the_recently_texted(db):
    # Given ten customers: 0-5 are vip, 4-5 also staff, and 3 was texted an hour ago by
    # another campaign
    ids = make_customers(10)
    _tag(ids[:6], "vip")
    _tag(ids[4:6], "staff")
    earlier = make_campaign(name="earlier")
    Message.create(campaign=earlier, customer=ids[3], status=MessageStatus.SENT, to_phone=phone_for(3),
                   sent_at=utcnow() - dt.timedelta(hours=1), twilio_sid="SM" + "3" * 32)
    campaign_id = make_campaign()
    Campaign.update(audience=Audience.parse(all_of=["VIP "], none_of=["staff"]).to_json(), frequency_cap_h=24).where(
        Campaign.id == campaign_id).execute()

    # When it is previewed, then fanned out
    seen = preview(campaign_id, short_url_base=BASE)
    fanout.fan_out(campaign_id, short_url_base=BASE, batch_size=2)

    # Then it targets the four vip who are not staff; the one texted an hour ago is skipped
    # with its reason, the other three are pending; nobody else has a row
    rows = {m.customer_id: (m.status, m.error_code) for m in Message.select().where(Message.campaign == campaign_id)}
    assert rows == {ids[0]: (MessageStatus.PENDING, None), ids[1]: (MessageStatus.PENDING, None),
                    ids[2]: (MessageStatus.PENDING, None), ids[3]: (MessageStatus.SKIPPED, SkipReason.FREQUENCY_CAP)}
    # and the preview said the same
    assert (seen.audience, seen.eligible, seen.skipped_by_reason) == (4, 3, {SkipReason.FREQUENCY_CAP: 1})

    # and the status says who was targeted and every exclusion by reason
    from campaigns import status_report
    from status_screen import format_status

    report = status_report(campaign_id)
    assert (report["audience"], report["skipped_by_reason"]) == ("all of vip; none of staff", {"frequency_cap": 1})
    shown = format_status(report)
    assert "audience: all of vip; none of staff (4 targeted)" in shown and "skipped: frequency_cap 1" in shown


def test_any_of_several_tags(db):
    ids = make_customers(4)
    _tag(ids[:1], "paris")
    _tag(ids[1:2], "nyc")
    campaign_id = make_campaign()
    Campaign.update(audience=Audience.parse(any_of=["paris", "nyc"]).to_json()).where(Campaign.id == campaign_id).execute()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    assert sorted(m.customer_id for m in Message.select()) == ids[:2]


def test_a_tag_both_targeted_and_excluded_is_refused():
    with pytest.raises(ValueError, match="both targeted and excluded"):
        Audience.parse(all_of=["vip"], none_of=["VIP"])


def test_campaign_create_keeps_its_audience_and_refuses_a_contradiction(db, stub_broker):
    # Given the command line
    from click.testing import CliRunner

    import cli

    # When a campaign is created for vip customers who are not staff, with a cap of 24 h
    result = CliRunner().invoke(cli.main, ["campaign", "create", "--name", "VIP", "--template", "Hi {first_name}: {short_url}",
                                           "--tag", "VIP", "--exclude-tag", "staff", "--frequency-cap", "24"])

    # Then the campaign targets exactly that
    assert result.exit_code == 0, result.output
    campaign = Campaign.get_by_id(int(result.output.strip()))
    assert Audience.of(campaign) == Audience(all_of=("vip",), none_of=("staff",)) and campaign.frequency_cap_h == 24

    # And a tag both targeted and excluded is one line and exit code 1
    refused = CliRunner().invoke(cli.main, ["campaign", "create", "--name", "X", "--template", "Hi {short_url}",
                                            "--tag", "vip", "--exclude-tag", "VIP"])
    assert refused.exit_code == 1 and refused.output.strip() == "Error: tag 'vip' is both targeted and excluded"


def test_the_global_frequency_cap_applies_to_a_campaign_without_its_own(db):
    # Given FREQUENCY_CAP_H=24, and a customer texted an hour ago by another campaign
    from errors import ConfigurationError
    from settings import Settings

    assert Settings.from_env({"FREQUENCY_CAP_H": "24"}).frequency_cap_h == 24
    with pytest.raises(ConfigurationError, match="FREQUENCY_CAP_H=-1 is out of range"):
        Settings.from_env({"FREQUENCY_CAP_H": "-1"})
    ids = make_customers(2)
    earlier = make_campaign(name="earlier")
    Message.create(campaign=earlier, customer=ids[0], status=MessageStatus.SENT, to_phone=phone_for(0),
                   sent_at=utcnow() - dt.timedelta(hours=1), twilio_sid="SM" + "4" * 32)
    campaign_id = make_campaign()

    # When the campaign (no cap of its own) is fanned out under the global cap
    fanout.fan_out(campaign_id, short_url_base=BASE, frequency_cap_h=24)

    # Then the recently texted number is skipped with its reason
    rows = {m.customer_id: m.error_code for m in Message.select().where(Message.campaign == campaign_id)}
    assert rows == {ids[0]: SkipReason.FREQUENCY_CAP, ids[1]: None}
