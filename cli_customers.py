"""``python -m cli customers ...``: customers in (and, later, out)."""

from __future__ import annotations

import csv
import os

import click
import phonenumbers

from cli_checks import csv_output
from errors import ConfigurationError


@click.group()
def customers() -> None:
    """Import customers from a CSV file, export them with their consent, read their replies."""


def _parse_map(text: str | None) -> dict[str, str]:
    renames = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        header, sep, column = part.partition("=")
        if not sep or not header.strip() or not column.strip():
            raise click.BadParameter(f"{part!r} is not HEADER=column", param_hint="--map")
        renames[header.strip()] = column.strip()
    return renames


def _count_lines(path: str) -> int:
    with open(path, "rb") as raw:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 20), b""))


@customers.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--region", default=None, help="Country of numbers without one, e.g. FR (default: DEFAULT_REGION).")
@click.option("--map", "mapping", default=None, help="Rename headers: 'Mobile=phone,Id=external_ref'.")
@click.option("--dry-run", is_flag=True, help="Report what would change; write nothing.")
@click.option("--rejects", "rejects_path", default=None, help="Where to write rejected rows (default: FILE.rejects.csv).")
@click.option("--assume-opt-in", is_flag=True, help="The file has no sms_opt_in column and every row consented.")
def customers_import(path: str, region: str | None, mapping: str | None, dry_run: bool, rejects_path: str | None,
                     assume_opt_in: bool) -> None:
    """Create or update customers from PATH (UTF-8 CSV with a header); safe to run again."""
    from importer import FileError, import_customers
    from models import configure_database, connection
    from schema import create_schema
    from settings import get_settings

    try:
        settings = get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(f"configuration error: {exc.reason}") from None
    if region is not None and region.strip().upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise click.BadParameter(f"{region!r} is not a country code such as US or FR", param_hint="--region")
    renames = _parse_map(mapping)
    rejects_path = rejects_path or os.path.splitext(path)[0] + ".rejects.csv"
    configure_database(settings.database_url)
    create_schema()
    rejected = []
    bar = click.progressbar(length=max(0, _count_lines(path) - 1), label="importing", file=None) \
        if click.get_text_stream("stdout").isatty() else None
    try:
        with open(path, newline="", encoding="utf-8-sig") as source, connection():
            if bar is not None:
                bar.__enter__()
            summary = import_customers(
                source, default_region=settings.default_region, region=region and region.strip().upper(),
                column_map=renames, assume_opt_in=assume_opt_in, dry_run=dry_run, on_reject=rejected.append,
                on_progress=bar.update if bar is not None else (lambda rows: None),
            )
    except FileError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    finally:
        if bar is not None:
            bar.update(max(0, bar.length - bar.pos))  # rows, counted by lines: a quoted field may span two
            bar.__exit__(None, None, None)
    if rejected:
        _write_rejects(rejects_path, rejected)
    for line in summary.lines():
        click.echo(line)
    if rejected:
        click.echo(f"rejected rows, with their line, column and reason: {rejects_path}")


def _write_rejects(path: str, rejects) -> None:
    names = list(dict.fromkeys(name for reject in rejects for name in reject.raw))
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["line", "column", "reason", "detail", *names])
        for r in sorted(rejects, key=lambda r: r.line):
            writer.writerow([r.line, r.column, r.reason, r.detail, *(r.raw.get(name, "") for name in names)])


@customers.command("export")
@click.option("--output", "-o", "output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the CSV (default: standard output).")
def customers_export(output: str) -> None:
    """Every customer with consent state and suppression, in the import's columns."""
    from customer_export import export_customers
    from models import configure_database, connection
    from settings import get_settings

    try:
        settings = get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(f"configuration error: {exc.reason}") from None
    configure_database(settings.database_url)
    with csv_output(output) as out, connection():
        count = export_customers(out)
    if output != "-":
        click.echo(f"{count} customers written to {output}")


@customers.command("inbox")
@click.argument("phone")
def customers_inbox(phone: str) -> None:
    """The texts PHONE sent that were not STOP or START (oldest first), the number masked."""
    from errors import InvalidPhone
    from inbox import inbox_for_phone
    from models import configure_database, connection
    from sms import mask_phone, normalize_phone

    try:
        settings = get_settings_or_fail()
        e164 = normalize_phone(phone, settings.default_region)
    except InvalidPhone as exc:
        raise click.BadParameter(exc.reason, param_hint="PHONE") from None
    configure_database(settings.database_url)
    with connection():
        replies = inbox_for_phone(e164)
    if not replies:
        click.echo(f"no replies from {mask_phone(e164)}")
    for reply in replies:
        who = f"customer {reply.customer_id}" if reply.customer_id is not None else "no customer"
        click.echo(f"{reply.received_at:%Y-%m-%d %H:%M:%S} UTC  {mask_phone(e164)} ({who}): {reply.body}")


def get_settings_or_fail():
    from settings import get_settings

    try:
        return get_settings()
    except ConfigurationError as exc:
        raise click.ClickException(f"configuration error: {exc.reason}") from None
