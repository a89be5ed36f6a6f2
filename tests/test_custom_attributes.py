"""Custom attributes (the import's other columns) as template placeholders: declared by an
import, so an unknown placeholder is still an error at campaign check; a customer without a
value is skipped with its reason rather than sent a message with a hole."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

import fanout
from errors import MessageTooLong, TemplateError
from importer import FileError, import_customers
from message_types import SkipReason
from models import Campaign, Message, MessageStatus
from rendering import check_campaign
from reports import preview

BASE = "https://x.test/q"
FILE = ("external_ref,first_name,phone,sms_opt_in,store,points\n"
        "a1,Ada,+12125550101,yes,Soho,120\n"
        "a2,Bob,+12125550102,yes,Brooklyn,\n"
        "a3,Cy,+12125550103,yes,,40\n")


def _import(text: str = FILE):
    return import_customers(io.StringIO(text, newline=""), default_region="US")


def test_a_template_may_use_an_imported_column_and_each_customer_gets_their_own_value(db):
    # Given customers imported with a store column, one of them without a store
    _import()
    campaign = Campaign.create(name="store", template="Hi {first_name}, {store} has a gift for you: {short_url}")

    # When it is previewed and fanned out
    seen = preview(campaign.id, short_url_base=BASE)
    fanout.fan_out(campaign.id, short_url_base=BASE)

    # Then each message carries its customer's store, and the one without is skipped with why
    rows = {m.customer.external_ref: m for m in Message.select().where(Message.campaign == campaign.id)}
    assert rows["a1"].body.startswith("Hi Ada, Soho has a gift for you: ")
    assert rows["a2"].body.startswith("Hi Bob, Brooklyn has a gift for you: ")
    assert (rows["a3"].status, rows["a3"].error_code) == (MessageStatus.SKIPPED, SkipReason.MISSING_ATTRIBUTE)
    assert rows["a3"].reason == "customer has no value for {store}"
    # and the preview counted the same
    assert (seen.eligible, seen.skipped_by_reason) == (2, {SkipReason.MISSING_ATTRIBUTE: 1})


def test_a_placeholder_no_import_declared_is_refused_at_check(db):
    # Given an import that declared store and points
    _import()

    # When a template uses a column no import brought
    campaign = Campaign(name="x", template="Hi {first_name}, see you at {shop}: {short_url}")

    # Then the check refuses it, naming the placeholder and the ones allowed
    with pytest.raises(TemplateError) as error:
        check_campaign(campaign, BASE)
    assert "unknown placeholder {shop} at position 28" in error.value.reason
    assert "custom attributes: {points}, {store}" in error.value.reason
    # while the declared one passes
    check_campaign(Campaign(name="x", template="{store}: {short_url}"), BASE)


def test_the_length_check_counts_the_template_with_empty_attributes(db):
    # Given a declared attribute and a template that is too long even without its value
    _import()
    campaign = Campaign(name="x", template="{store} " + "x" * 160 + " {short_url}")

    # Then the check refuses it as too long, not as an unknown placeholder
    with pytest.raises(MessageTooLong) as error:
        check_campaign(campaign, BASE)
    assert error.value.code == "too_long"


@pytest.mark.parametrize("column", ["name", "short_url"])
def test_a_column_named_like_a_built_in_placeholder_is_refused(db, column):
    # When a file has a column that would shadow a built-in placeholder
    with pytest.raises(FileError) as error:
        _import(f"phone,sms_opt_in,{column}\n+12125550101,yes,x\n")

    # Then it says so in one line, and nothing is imported
    assert str(error.value) == (f"column 3 ('{column}') has the name of a placeholder the product fills: rename it in "
                                "the file, or map it with --map HEADER=first_name")


def test_campaign_create_accepts_a_declared_attribute_and_refuses_an_unknown_one(db, stub_broker):
    import cli

    # Given an import that declared store
    _import()

    # When campaigns are created from the CLI with a declared and an unknown placeholder
    ok = CliRunner().invoke(cli.main, ["campaign", "create", "--name", "a", "--template", "{store}: {short_url}"],
                            prog_name="python -m cli")
    bad = CliRunner().invoke(cli.main, ["campaign", "create", "--name", "b", "--template", "{shop}: {short_url}"],
                             prog_name="python -m cli")

    # Then the first is saved and the second refused in one line, without a traceback
    assert ok.exit_code == 0 and Campaign.get_by_id(int(ok.output)).template == "{store}: {short_url}"
    assert bad.exit_code == 1 and "unknown placeholder {shop} at position 0" in bad.output
    assert "Traceback" not in bad.output and Campaign.select().count() == 1
