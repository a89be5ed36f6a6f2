"""The preview as the operator reads it (``python -m cli campaign preview ID``)."""

from __future__ import annotations

from reports import Preview


def format_preview(result: Preview) -> str:
    lines = [f"Preview of campaign {result.campaign_id} (nothing is sent)"]
    if result.sender_check is not None:
        lines.append(f"  {result.sender_check.line()}")
    if result.template_error:
        lines.append(f"  TEMPLATE ERROR: {result.template_error}")
    for sample in result.samples:
        lines.append(f"--- to {sample['to']} ({sample['encoding']}, {sample['units']} units, "
                     f"{sample.get('segments', 1)} segment{'s' if sample.get('segments', 1) > 1 else ''})")
        lines.extend("    " + line for line in sample["body"].splitlines())
    rows = [("audience", result.audience), ("would be sent", result.eligible)]
    rows += [(f"skipped: {reason}", count) for reason, count in sorted(result.skipped_by_reason.items())]
    rows += [("too long (would fail)", result.too_long)]
    rows += [(f"encoding {encoding}", count) for encoding, count in sorted(result.encodings.items())]
    rows += [("segments", result.segments)]
    lines += [f"{label:<26}{count:>8}" for label, count in rows]
    fit = result.fit
    if fit is None:
        lines.append(f"{'estimated cost':<26}{result.estimated_cost:>8.2f}  (at {result.price_per_segment} per segment)")
        return "\n".join(lines)
    lines.append(f"{'smart encoding changed':<26}{fit.changed_by_smart_encoding:>8}"
                 + ("" if fit.rules.smart_encoding else "  (off for this campaign)"))
    if fit.rules.on_overflow == "transliterate":
        lines.append(f"{'transliterated':<26}{fit.changed_by_transliteration:>8}")
    lines.append(f"too long under each policy (this campaign: {fit.rules.on_overflow}):")
    lines += [f"  {policy:<24}{count:>8}" for policy, count in fit.failing_under.items()]
    if fit.failing:
        lines.append("would fail, for example:")
        lines += [f"  {f['to']} {f['name'] or '(no name)'}: {f['reason']}" for f in fit.failing]
    lines.append("estimated cost by country:")
    for country, cost in fit.priced().items():
        priced = (f"x {cost.price} = {cost.cost:.2f}" if cost.price is not None
                  else "x ? (no price: set SMS_PRICES, e.g. FR=0.0725)")
        lines.append(f"  {country:<4}{cost.messages:>8} messages {cost.segments:>8} segments {priced}")
    total = f"{'estimated cost':<26}{result.estimated_cost:>8.2f}"
    if fit.unpriced_segments:
        total += f"  (and {fit.unpriced_segments} segments without a price)"
    lines.append(total)
    return "\n".join(lines)
