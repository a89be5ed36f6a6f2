"""What the operator's command line (``cli.py``) checks before it does anything, and how
it fails: every failure it knows of is one line naming the problem, and a non-zero exit.

- Bad input is refused by the parameter types here (a campaign id out of range, an empty
  or unreadable ``--at``, an ``--interval`` that cannot be slept) as a usage error (exit 2).
- ``OperatorGroup``, the top command group, turns the project's own errors (a campaign
  that cannot do what was asked, a setting, a draft that cannot be saved), the database's
  and Redis's into one line (exit 1); the connection errors name ``DATABASE_URL`` or
  ``REDIS_URL``, with the password masked. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import sys
from typing import Iterator, TextIO
from urllib.parse import unquote, urlsplit

import click

from campaigns import MAX_ID

#: ``campaign.id`` is an ``integer`` on PostgreSQL; an id beyond it could not be looked up.
CAMPAIGN_ID = click.IntRange(1, MAX_ID)


class Text(click.ParamType):
    """A string the database can store: text that is not UTF-8 (bytes the shell could not
    decode) is refused here rather than by the driver, with a traceback."""

    name = "text"

    def convert(self, value, param, ctx):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.fail("is not valid UTF-8 text", param, ctx)
        return value


class StartTime(click.ParamType):
    """An ISO date and time, given with its UTC offset or naive (UTC), as naive UTC. Empty is
    refused: to send now, the option is left out (whether it is in the past is for
    ``campaigns.check_send_at``, on the database's clock)."""

    name = "datetime"
    example = "2026-12-01T09:00:00-05:00"

    def convert(self, value, param, ctx):
        if isinstance(value, dt.datetime):
            return value
        if not value.strip():
            self.fail(f"is empty: give a date and time such as {self.example}, or leave --at out to send now", param, ctx)
        try:
            parsed = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            self.fail(f"{value!r} is not an ISO date and time such as {self.example}", param, ctx)
        if parsed.tzinfo is None:
            return parsed
        try:
            return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
        except OverflowError:
            self.fail(f"{value!r} is out of range once in UTC", param, ctx)


class Seconds(click.ParamType):
    """A number of seconds from ``low`` to ``high`` (finite: time.sleep takes no NaN)."""

    name = "seconds"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and self.low <= seconds <= self.high):
            self.fail(f"{value} is not a number of seconds from {self.low:g} to {self.high:g}", param, ctx)
        return seconds


def broker_ready(broker) -> None:
    """Ask Redis for a PONG before changing anything (a stub broker has nothing to ask): a
    command whose database change would be followed by a broker call that fails would
    leave half of it done."""
    client = getattr(broker, "redis_client", None)
    if client is not None:
        client.ping()


# --------------------------------------------------------------- failures in one line
class OperatorGroup(click.Group):
    """The top command group: a failure of any command below it (its arguments' parsing
    included) that ``explain`` knows becomes one line and a non-zero exit."""

    def make_context(self, info_name, args, parent=None, **extra):
        with one_line_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with one_line_errors():
            return super().invoke(ctx)


class OneLineUsageError(click.ClickException):
    """A usage error without the usage block: the problem and where the help is."""

    exit_code = 2


@contextlib.contextmanager
def one_line_errors():
    try:
        yield
    except getattr(click.exceptions, "NoArgsIsHelpError", ()):
        raise  # a group run without a command: its help, as click shows it
    except click.UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise OneLineUsageError(one_line(exc.format_message()) + where) from None
    except click.ClickException as exc:
        if "\n" in exc.format_message():
            flat = click.ClickException(one_line(exc.format_message()))
            flat.exit_code = exc.exit_code
            raise flat from None
        raise
    except Exception as exc:
        message = explain(exc)
        if message is None:
            raise
        raise click.ClickException(one_line(message)) from None


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def explain(exc: Exception) -> str | None:
    """One line for a failure this project knows of, None for anything else (a bug)."""
    from errors import CampaignError, ConfigurationError

    if isinstance(exc, ConfigurationError):
        return f"configuration error: {exc.reason}"
    if isinstance(exc, CampaignError):
        return exc.reason
    import peewee

    if isinstance(exc, (peewee.DatabaseError, peewee.InterfaceError)):
        url = _database_url()
        message = _first_line(exc, url)
        if "no such table" in message or ("relation" in message and "does not exist" in message):
            message += "; run 'python -m cli init-db' first"
        return f"database error (DATABASE_URL={mask_url(url)}): {message}"
    import dramatiq.errors
    import redis.exceptions

    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, dramatiq.errors.BrokerConnectionError)):
        url = _redis_url()
        return f"cannot reach Redis at REDIS_URL={mask_url(url)}: {_first_line(exc, url)}"
    if isinstance(exc, (redis.exceptions.RedisError, dramatiq.errors.BrokerError)):
        url = _redis_url()
        return f"Redis error (REDIS_URL={mask_url(url)}): {_first_line(exc, url)}"
    return None


def _first_line(exc: Exception, url: str) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        password = None
    return text.replace(password, "***").replace(unquote(password), "***") if password else text


def _settings():
    from settings import get_settings

    try:
        return get_settings()
    except Exception:
        return None


def _database_url() -> str:
    from models import database

    return getattr(database.obj, "_project_url", None) or getattr(_settings(), "database_url", "")


def _redis_url() -> str:
    return getattr(_settings(), "redis_url", "")


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ***; the
    rest exactly as given (``sqlite:////abs/path`` keeps its four slashes)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed URL>"
    if "@" in parts.netloc:
        userinfo, _at, host = parts.netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        # redis-py reads a lone user part as the password
        userinfo = f"{user}:***" if colon else ("***" if parts.scheme in ("redis", "rediss", "unix") else user)
        url = url.replace(parts.netloc, f"{userinfo}@{host}", 1)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


@contextlib.contextmanager
def csv_output(path: str) -> Iterator[TextIO]:
    """Where a command writes its CSV: standard output for ``-``, else the file (created,
    UTF-8, the csv module's line endings kept); a file that cannot be written is one line."""
    if path == "-":
        yield sys.stdout
        return
    try:
        stream = open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    with stream:
        yield stream
