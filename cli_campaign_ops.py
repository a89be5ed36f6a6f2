"""``python -m cli campaign test|retry|export|list|clone|delete``: operating a campaign
beyond its start and its pause. Each command is a thin wrapper over a plain function
(``actors.campaign_ops``, ``campaign_export``, ``campaign_admin``); ``cli.py`` attaches
them to its ``campaign`` group."""

from __future__ import annotations

import json

import click

from cli_checks import CAMPAIGN_ID, Text, broker_ready, csv_output

#: A customer's id, as ``customer.id`` can hold it.
CUSTOMER_ID = click.IntRange(1, 2**31 - 1)


def _bootstrap():
    """The broker setup (and the settings), only when a command runs (as ``cli._bootstrap``)."""
    import actors

    return actors


@click.command("test")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--to", "to", required=True, type=Text(), help="Your own number, in E.164 (+12125550100).")
@click.option("--customer", "customer_id", default=None, type=CUSTOMER_ID,
              help="Render the message as this customer's (default: the first of the audience who would get it).")
def campaign_test(campaign_id: int, to: str, customer_id: int | None) -> None:
    """Send one test message, exactly as a customer's would be, to --to; counted nowhere."""
    _bootstrap()
    from actors.campaign_ops import send_test_message
    from models import connection
    from sms import mask_phone

    with connection():
        sent = send_test_message(campaign_id, to=to, customer_id=customer_id)
    whose = f"customer {sent.customer_id}'s" if sent.customer_id is not None else "a sample customer's"
    click.echo(f"test message of campaign {campaign_id} sent to {mask_phone(sent.to_phone)} as {whose} message "
               f"(SID {sent.twilio_sid}, {sent.segments} segment{'s' if sent.segments != 1 else ''}); "
               "not counted in the campaign")
    for line in sent.body.splitlines():
        click.echo("    " + line)


@click.command("retry")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--undelivered", is_flag=True,
              help="Also those Twilio reported undelivered with a carrier error a retry can cure (30001, 30003, 30008, 30017, 30036).")
def campaign_retry(campaign_id: int, undelivered: bool) -> None:
    """Send once more to the customers whose send failed for a transient reason."""
    actors = _bootstrap()
    from actors.campaign_ops import retry
    from campaigns import check_action
    from models import connection

    with connection():
        check_action(campaign_id, "retry")
        broker_ready(actors.broker)
        result = retry(campaign_id, undelivered=undelivered)
    if result.token is None:
        click.echo(f"campaign {campaign_id}: nothing to retry (no send failed for a reason a retry can cure)")
        return
    parts = [f"{len(result.pending) - len(result.undelivered)} whose retries ran out",
             f"{len(result.reconciling)} of unknown outcome, looked up at Twilio first"]
    if undelivered:
        parts.append(f"{len(result.undelivered)} undelivered")
    click.echo(f"campaign {campaign_id}: retrying {result.total} customers: " + ", ".join(parts) + "; sending")


@click.command("export")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--out", "out", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the CSV (default: standard output).")
@click.option("--full-phone", is_flag=True, help="Write phone numbers in full (default: masked, +1******0101).")
def campaign_export(campaign_id: int, out: str, full_phone: bool) -> None:
    """One CSV row per customer: reference, phone, outcome, reason, SID, delivery, clicks."""
    _bootstrap()
    from campaign_export import export_campaign
    from campaigns import check_action
    from models import connection

    with connection():
        check_action(campaign_id, "export")
        with csv_output(out) as stream:
            outcomes = export_campaign(campaign_id, stream, full_phone=full_phone)
    if out != "-":
        counts = ", ".join(f"{status} {n}" for status, n in sorted(outcomes.items())) or "none"
        click.echo(f"{sum(outcomes.values())} customers of campaign {campaign_id} written to {out} ({counts})")


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the campaigns as a JSON list.")
def campaign_list(as_json: bool) -> None:
    """Every campaign, newest first: id, status, created, counts, name."""
    _bootstrap()
    from campaign_admin import list_campaigns
    from models import connection

    with connection():
        if as_json:
            click.echo(json.dumps(list(list_campaigns()), indent=2))
            return
        for c in list_campaigns():
            click.echo(f"{c['id']:>6}  {c['status']:<10} {c['created_at'] or '-':<19}  targeted {c['targeted']:<7} "
                       f"sent {c['sent']:<7} failed {c['failed']:<6} skipped {c['skipped']:<6} {c['name']!r}")


@click.command("clone")
@click.argument("campaign_id", type=CAMPAIGN_ID)
@click.option("--name", default=None, type=Text(), help="The copy's name (default: '<name> (copy)').")
def campaign_clone(campaign_id: int, name: str | None) -> None:
    """A new draft with the same template and settings; prints its id."""
    _bootstrap()
    from campaign_admin import clone_campaign
    from models import connection

    with connection():
        click.echo(clone_campaign(campaign_id, name=name))


@click.command("delete")
@click.argument("campaign_id", type=CAMPAIGN_ID)
def campaign_delete(campaign_id: int) -> None:
    """Delete a draft (a campaign that ran keeps its record)."""
    _bootstrap()
    from campaign_admin import delete_draft
    from models import connection

    with connection():
        delete_draft(campaign_id)
    click.echo(f"campaign {campaign_id} deleted")
