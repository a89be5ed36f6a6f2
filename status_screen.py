"""What ``campaign status`` shows: the report as text (``format_status``), and the
``--watch`` screen, redrawn in place on a terminal (``Screen``)."""

from __future__ import annotations

import datetime as dt

#: ANSI: cursor home, clear to the end of the line, clear to the end of the screen, clear
#: the screen, hide and show the cursor.
HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def format_status(r: dict) -> str:
    """The report of ``campaign_status.status_report`` as the lines an operator reads."""
    lines = [f"Campaign {r['campaign_id']} {r['name']!r}: {r['status']}" + (f" ({r['status_reason']})" if r["status_reason"] else "")]
    if r.get("audience"):
        lines.append(f"  audience: {r['audience']} ({r['targeted']} targeted)")
    starts = r.get("starts")
    if starts:
        lines.append(f"  starts {starts['utc'][:16].replace('T', ' ')} UTC ({starts['local']} {starts['zone']})")
    lines.append(f"  {r['progress']}")
    lines.append(
        f"  sent {r['sent']:,}  delivered {r['delivered']:,}  undelivered {r.get('undelivered', 0):,}  failed {r['failed']:,}  "
        f"skipped {r['skipped']:,}  cancelled {r['cancelled']:,}  pending {r['pending']:,}"
    )
    lines.append(f"  {_rate(r)}  {_eta(r)}")
    for hold in r.get("held_by_zone") or ():
        until = f"{hold['until_local']} {hold['zone']}" if hold["until_local"] else f"{hold['until_utc'][11:16]} UTC ({hold['zone']})"
        lines.append(f"  {hold['rows']:,} held by quiet hours until {until}")
    if r.get("twilio_holds", []) is None:
        lines.append("  Twilio holds: unknown (cannot reach REDIS_URL)")
    for hold in r.get("twilio_holds") or ():
        lines.append(f"  {hold['held']} held until {hold['until_local']} {hold['zone']} ({hold['reason']})")
    if r.get("failed_by_reason"):
        lines.append("  failed: " + ", ".join(f"{reason} {count:,}" for reason, count in r["failed_by_reason"].items()))
    if r.get("skipped_by_reason"):
        lines.append("  skipped: " + ", ".join(f"{reason} {count:,}" for reason, count in r["skipped_by_reason"].items()))
    if r.get("carrier_errors"):
        lines.append("  carrier errors: " + ", ".join(f"{code} {count:,}" for code, count in sorted(r["carrier_errors"].items())))
    if "unique_clicks" in r:
        lines.append(f"  unique clicks {r['unique_clicks']:,}")
    return "\n".join(lines)


def _rate(r: dict) -> str:
    per_min = r["rate_per_minute"]
    shown = f"{per_min / 60:.1f}/s" if per_min >= 60 else f"{per_min}/min"
    text = f"rate {shown}"
    if r.get("rate_window_s"):
        text += f" (last {_duration(r['rate_window_s'])})"
    if r.get("limit_per_minute"):
        limit = r["limit_per_minute"]
        text += f"  limit {limit / 60:.1f}/s" if limit >= 60 else f"  limit {limit}/min"
    return text


def _eta(r: dict) -> str:
    if r["status"] == "paused":
        return "ETA - (paused: resume to continue)"
    if r["status"] == "scheduled":
        return "ETA - (not started)"
    if r["eta_seconds"] is None:
        return "ETA -"
    text = f"ETA {dt.timedelta(seconds=r['eta_seconds'])}"
    if r["eta_seconds"] and r.get("now"):
        finish = dt.datetime.fromisoformat(r["now"].rstrip("Z")) + dt.timedelta(seconds=r["eta_seconds"])
        text += f" (about {finish:%Y-%m-%d %H:%M} UTC)"
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else str(dt.timedelta(seconds=int(seconds)))


class Screen:
    """The ``--watch`` screen. On a terminal each report is redrawn in place, in one write
    (cursor home, each line cleared to its end, the rest of the screen cleared), the cursor
    hidden meanwhile; elsewhere (a pipe, a file) each report is printed after the last, a
    blank line between them.

    Parameters:
        stream: where to draw (a text stream).
        terminal: whether ``stream`` is a terminal (default: ``stream.isatty()``).
    """

    def __init__(self, stream, *, terminal: bool | None = None) -> None:
        self.stream = stream
        self.terminal = stream.isatty() if terminal is None else terminal
        self.frames = 0

    def show(self, text: str) -> None:
        if self.terminal:
            start = (HIDE_CURSOR + HOME + CLEAR_SCREEN) if self.frames == 0 else HOME
            frame = start + "".join(line + CLEAR_LINE + "\n" for line in text.split("\n")) + CLEAR_BELOW
        else:
            frame = ("\n" if self.frames else "") + text + "\n"
        self.stream.write(frame)
        self.stream.flush()
        self.frames += 1

    def close(self) -> None:
        if self.terminal and self.frames:
            self.stream.write(SHOW_CURSOR)
            self.stream.flush()
