"""``python -m cli campaign edit ID [options]``: change a draft before it is sent (its
name, template, audience, limits, zone, sender, overflow rule, language). Only what is
given changes; the draft is checked as ``campaign create`` checks a new one
(``campaign_drafts.edit_draft``). A campaign that ran is never edited: clone it. A new sender is asked of Twilio, as
``campaign send`` asks."""

from __future__ import annotations

import click

from cli_checks import CAMPAIGN_ID, Text


def _bootstrap():
    """The broker setup (and the settings), only when a command runs (as ``cli._bootstrap``)."""
    import actors

    return actors


@click.command("edit")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--name", default=None, type=Text())
@click.option("--template", default=None, type=Text(), help="The new template (placeholders as for create).")
@click.option("--rate-limit", default=None, type=Text(), help="A new limit, e.g. '5/minute', or 'none' for the global one.")
@click.option("--time-zone", default=None, type=Text(), help="A new zone for quiet hours, or 'none'.")
@click.option("--tag", "all_tags", multiple=True, type=Text(), help="The audience becomes customers with this tag (repeat: all of them).")
@click.option("--any-tag", "any_tags", multiple=True, type=Text(), help="... with at least one of these tags.")
@click.option("--exclude-tag", "none_tags", multiple=True, type=Text(), help="... never customers with this tag.")
@click.option("--all-customers", is_flag=True, help="The audience becomes every customer (no tag rule).")
@click.option("--frequency-cap", "cap_h", default=None, type=click.IntRange(0, 24 * 365),
              help="Skip numbers any campaign texted in the last this many hours (0: none).")
@click.option("--on-overflow", default=None, type=Text(), help="fail, transliterate or segments:N (2 to 10).")
@click.option("--smart-encoding/--no-smart-encoding", default=None)
@click.option("--from", "from_number", default=None, type=Text(), help="Send from this number of the Twilio account.")
@click.option("--messaging-service", "messaging_service_sid", default=None, type=Text(),
              help="Send through this messaging service (MG followed by 32 hex digits).")
@click.option("--language", default=None, type=Text(), help="The language of the footer: en or fr.")
def campaign_edit(campaign_id: int, all_tags, any_tags, none_tags, all_customers: bool, **options) -> None:
    """Change a draft; prints what changed. A tag option replaces the whole audience."""
    if all_customers and (all_tags or any_tags or none_tags):
        raise click.UsageError("give tag options or --all-customers, not both")
    _bootstrap()
    from audience import Audience
    from campaign_drafts import draft_changes, edit_draft
    from errors import PermanentError
    from models import connection
    from settings import get_settings

    with connection():  # the custom attributes imports declared are placeholders too
        try:
            audience = (Audience() if all_customers else
                        Audience.parse(all_of=all_tags, any_of=any_tags, none_of=none_tags)
                        if all_tags or any_tags or none_tags else None)
            settings = get_settings()
            changes = draft_changes(**options)
            _check_new_sender(campaign_id, settings, changes)
            changed = edit_draft(campaign_id, settings=settings, changes=changes, audience=audience)
        except ValueError as exc:  # a tag or a sender that cannot be read
            raise click.ClickException(str(exc)) from None
        except PermanentError as exc:
            raise click.ClickException(exc.reason) from None
    click.echo(f"campaign {campaign_id} edited: {', '.join(changed)}" if changed else
               f"campaign {campaign_id}: nothing to change")


def _check_new_sender(campaign_id: int, settings, changes: dict) -> None:
    """A new sender is asked of Twilio as ``campaign send`` asks (with SMS_BACKEND=twilio):
    an edit may land after ``send`` checked the old one and before a worker starts the
    campaign. A sender Twilio does not know is refused; one it cannot be asked about passes."""
    if settings.sms_backend != "twilio" or not ({"from_number", "messaging_service_sid"} & changes.keys()):
        return
    from sender_check import check_sender

    sender = changes.get("messaging_service_sid") or changes.get("from_number")
    checked = check_sender(settings, sender) if sender else None
    if checked is not None and checked.known is False:
        raise click.ClickException(f"campaign {campaign_id} not edited: {checked.line()}")
