"""The campaign page's charts as SVG drawn on the server: the funnel and the sends per
minute. No script and no chart library (the page needs neither to load, offline too, and
the CSP allows no script); each bar carries a ``<title>`` its exact figure shows in, on
hover or a long press. Only numbers and times go into the markup, escaped all the same."""

from __future__ import annotations

from markupsafe import Markup, escape

from sends_series import Bar

WIDTH, HEIGHT = 600, 180
LEFT, BOTTOM, TOP = 44, 22, 8
#: The chart is divided in at least this many slots.
MIN_SLOTS = 30


def _n(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:,.1f}".rstrip("0").rstrip(".")


def sends_per_minute(bars: list[Bar]) -> Markup:
    """Bars of the average sends per minute over each bar's minutes, oldest left."""
    if not bars:
        return Markup('<p class="muted">No sends yet.</p>')
    peak = max(bar.per_minute for bar in bars) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / max(len(bars), MIN_SLOTS)  # a short series keeps thin bars
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="sends per minute, peak {escape(_n(peak))}">']
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}" y2="{TOP + plot_h}" class="axis"/>')
    parts.append(f'<text x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end" class="label">{escape(_n(peak))}</text>')
    parts.append(f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end" class="label">0</text>')
    for i, bar in enumerate(bars):
        h = plot_h * bar.per_minute / peak
        x = LEFT + i * step
        when = f"{bar.start:%Y-%m-%d %H:%M} UTC" + (f", {bar.minutes} min" if bar.minutes > 1 else "")
        parts.append(f'<rect x="{x + step * 0.1:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(step * 0.8, 0.5):.1f}" '
                     f'height="{h:.1f}" class="bar"><title>{escape(when)}: {escape(_n(bar.per_minute))}/min '
                     f'({bar.sends:,} sent)</title></rect>')
    first, last = bars[0].start, bars[-1].start
    if len(bars) > 1:
        parts.append(f'<text x="{LEFT}" y="{HEIGHT - 6}" class="label">{first:%H:%M}</text>')
    parts.append(f'<text x="{max(min(LEFT + len(bars) * step, WIDTH - 4), LEFT + 90):.1f}" y="{HEIGHT - 6}" '
                 f'text-anchor="end" class="label">{last:%H:%M} UTC</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def funnel(steps: list[tuple[str, int]]) -> Markup:
    """One horizontal bar per step, as a share of the first."""
    top = max((n for _, n in steps[:1]), default=0) or 1
    row_h, label_w = 30, 90
    height = row_h * len(steps)
    parts = [f'<svg class="funnel" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="funnel">']
    for i, (label, n) in enumerate(steps):
        w = (WIDTH - label_w - 120) * min(n, top) / top
        y = i * row_h
        parts.append(f'<text x="0" y="{y + 19}" class="label">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 5}" width="{w:.1f}" height="{row_h - 10}" class="bar step{i}">'
                     f'<title>{escape(label)}: {n:,}</title></rect>')
        share = f" ({100 * n / top:.1f} %)" if i else ""
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 19}" class="label">{n:,}{escape(share)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
