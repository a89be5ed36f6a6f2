"""What the command line does with log records.

- A process that has not set up logging gets one handler: warnings and errors to stderr,
  as Python would print them anyway, except the records of ``events``: in the command line
  an event is the operator's own action (``campaign_paused``, ``campaign_cancelled``), which
  the command reports in its one line and the ``event`` table keeps. (Before, ``pause`` and
  ``cancel`` printed the event's log record and then their line.)
- ``held()``: while a ``status --watch`` screen is drawn, every record (and every Python
  warning) is held in memory instead of being printed into it, and printed to stderr once
  the watch ends.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys

#: Records that the command line does not print: the command says the same in its line.
SILENT_LOGGERS = ("events",)
#: Records held during a watch, the most recent kept.
MAX_HELD = 200


class _Stderr(logging.StreamHandler):
    """A handler for whatever ``sys.stderr`` is when the record comes (as Python's last
    resort handler), so that a test runner's captured stream is never kept past its test."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _NotSilent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name or record.name.startswith(name + ".") for name in SILENT_LOGGERS)


def configure() -> None:
    """Set up logging for a command, unless the process already has (a shell, a test)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = _Stderr()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_NotSilent())
    root.addHandler(handler)


class _Held(logging.Handler):
    def __init__(self, capacity: int) -> None:
        super().__init__(logging.WARNING)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.count = 0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.addFilter(_NotSilent())

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.lines.append(self.format(record))


@contextlib.contextmanager
def held(*, stream=None, capacity: int = MAX_HELD):
    """Hold every log record of warning level and above (and Python's warnings) while the
    block runs; print them to ``stream`` (stderr) after it, the ``capacity`` most recent.

    Parameters:
        stream: where the held records go afterwards (default: ``sys.stderr`` then).
        capacity: how many of the most recent are kept.
    """
    root = logging.getLogger()
    handler = _Held(capacity)
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    logging.captureWarnings(True)
    try:
        yield handler
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved
        if handler.count:
            out = stream or sys.stderr
            dropped = handler.count - len(handler.lines)
            out.write(f"{handler.count} log record(s) held during the watch" + (f", the last {len(handler.lines)}" if dropped else "") + ":\n")
            out.write("".join(line + "\n" for line in handler.lines))
            out.flush()
