"""``campaign edit``: a draft's template, audience and settings changed after it was
created, checked as create checks them; anything but a draft is refused."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import cli
from audience import Audience
from models import Campaign, CampaignStatus, Event


@pytest.fixture
def database(sqlite_db, tmp_path) -> str:
    """The URL of the test's SQLite file, which the CLI's subprocess and the test share."""
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args), prog_name="python -m cli")


def create(*options) -> int:
    result = invoke("campaign", "create", "--name", "Winter", "--template", "Hi {first_name}: {short_url}", *options)
    assert result.exit_code == 0, result.output
    return int(result.output.strip())


def test_a_drafts_audience_template_and_limit_are_changed_and_the_rest_kept(db, stub_broker):
    # Given a draft to vip customers, not staff, capped at 24 h
    campaign_id = create("--tag", "vip", "--exclude-tag", "staff", "--frequency-cap", "24", "--rate-limit", "5/minute")

    # When its audience becomes any of two stores, its template is fixed and its limit dropped
    result = invoke("campaign", "edit", str(campaign_id), "--any-tag", "Store 1", "--any-tag", "store 2",
                    "--template", "Hello {first_name}: {short_url}", "--rate-limit", "none")

    # Then it says what changed, in one line, and the draft holds exactly that
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"campaign {campaign_id} edited: template, rate_limit, audience"
    campaign = Campaign.get_by_id(campaign_id)
    assert Audience.of(campaign) == Audience(any_of=("store 1", "store 2"))
    assert (campaign.template, campaign.rate_limit, campaign.frequency_cap_h, campaign.name) == (
        "Hello {first_name}: {short_url}", None, 24, "Winter")
    # And the change is on record
    assert Event.get(Event.campaign_id == campaign_id, Event.code == "campaign_edited").detail == (
        "changed template, rate_limit, audience")


def test_all_customers_clears_the_audience_and_nothing_given_changes_nothing(db, stub_broker):
    # Given a draft to vip customers
    campaign_id = create("--tag", "vip")

    # When the audience is cleared, then an edit is given nothing
    cleared = invoke("campaign", "edit", str(campaign_id), "--all-customers")
    nothing = invoke("campaign", "edit", str(campaign_id))

    # Then the draft targets everyone, and the empty edit says so without writing
    assert cleared.exit_code == 0 and Campaign.get_by_id(campaign_id).audience is None, cleared.output
    assert nothing.exit_code == 0 and nothing.output.strip() == f"campaign {campaign_id}: nothing to change"
    assert Event.select().where(Event.code == "campaign_edited").count() == 1


def test_an_edit_is_checked_as_create_checks_and_a_refused_one_changes_nothing(db, stub_broker):
    # Given a draft
    campaign_id = create()

    # When an edit gives a template without its link, a contradictory audience, or --tag with --all-customers
    no_link = invoke("campaign", "edit", str(campaign_id), "--template", "Hi {first_name}", "--name", "Renamed")
    both = invoke("campaign", "edit", str(campaign_id), "--tag", "vip", "--exclude-tag", "VIP")
    clash = invoke("campaign", "edit", str(campaign_id), "--tag", "vip", "--all-customers")

    # Then each is one line, exit code 1 (2 for a usage error), and the draft is as it was
    assert no_link.exit_code == 1 and "{short_url}" in no_link.output and len(no_link.output.strip().splitlines()) == 1
    assert both.exit_code == 1 and both.output.strip() == "Error: tag 'vip' is both targeted and excluded"
    assert clash.exit_code == 2 and "--all-customers" in clash.output
    campaign = Campaign.get_by_id(campaign_id)
    assert (campaign.name, campaign.template, campaign.audience) == ("Winter", "Hi {first_name}: {short_url}", None)


def test_only_a_draft_can_be_edited(db, stub_broker):
    # Given a campaign that is sending, and an id that does not exist
    campaign_id = create()
    Campaign.update(status=CampaignStatus.SENDING).where(Campaign.id == campaign_id).execute()

    # When either is edited
    sending = invoke("campaign", "edit", str(campaign_id), "--name", "Other")
    missing = invoke("campaign", "edit", "999", "--name", "Other")

    # Then each is refused in one line naming why, and nothing changed
    assert sending.exit_code == 1 and sending.output.strip() == (
        f"Error: campaign {campaign_id} is sending: only a draft can be edited (clone it to change a copy)")
    assert missing.exit_code == 1 and missing.output.strip() == "Error: campaign 999 does not exist"
    assert Campaign.get_by_id(campaign_id).name == "Winter"


def test_an_edit_that_lands_while_a_fan_out_starts_the_draft_is_what_the_fan_out_sends(postgres_db):
    # Given a draft to vip customers, a vip and a staff customer, and a fan-out that has read the draft and
    # waits to mark it sending (a transaction holds the campaign's row)
    import threading

    import fanout
    from models import CustomerTag, Message, database
    from tests.conftest import wait_for
    from tests.factories import make_customers

    vip, staff = make_customers(2)
    CustomerTag.insert_many([(vip, "vip"), (staff, "staff")], fields=[CustomerTag.customer, CustomerTag.tag]).execute()
    campaign_id = create("--tag", "vip", "--from", "+12125550100")

    def run_fan_out():
        with database.connection_context():
            fanout.fan_out(campaign_id, short_url_base="https://x.test/q")

    fan_out = threading.Thread(target=run_fan_out)
    with database.atomic():
        database.execute_sql('SELECT 1 FROM "campaign" WHERE "id" = %s FOR UPDATE', (campaign_id,))
        fan_out.start()
        wait_for(lambda: database.execute_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0)

        # When the draft's audience is edited to staff and the edit commits first
        edited = invoke("campaign", "edit", str(campaign_id), "--tag", "staff")
    fan_out.join(timeout=30)

    # Then the edit said it was made, and the fan-out sent what it said: the staff customer only
    assert edited.exit_code == 0, edited.output
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING
    assert [m.customer_id for m in Message.select().where(Message.campaign == campaign_id)] == [staff]


def test_an_edit_to_a_sender_twilio_does_not_know_is_refused_as_send_refuses_it(database, fake_twilio):
    # Given a Twilio account holding number A only, and a draft from A
    # (an edit can land after `campaign send` checked the sender, before a worker starts it)
    from tests.test_cli_campaign import assert_fails, run_cli
    from tests.test_sender_per_campaign import NUMBER_A, NUMBER_B, campaign_with

    fake_twilio.set_account_numbers([NUMBER_A])
    draft = campaign_with(NUMBER_A)
    env = dict(SMS_BACKEND="twilio", TWILIO_ACCOUNT_SID=fake_twilio.account_sid, TWILIO_AUTH_TOKEN=fake_twilio.auth_token,
               TWILIO_FROM_NUMBER=NUMBER_A, TWILIO_API_BASE_URL=fake_twilio.base_url)

    # When its sender is changed to B, which the account does not have
    refused = run_cli("campaign", "edit", str(draft), "--from", NUMBER_B, database=database, **env)

    # Then the edit is refused in one line naming why, and the draft still sends from A
    assert_fails(refused, rf"Error: campaign {draft} not edited: sender number \+12125550122: UNKNOWN to Twilio .*")
    assert Campaign.get_by_id(draft).from_number == NUMBER_A
