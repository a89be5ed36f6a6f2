"""One row of a customer file, cleaned the way users expect, or refused with a reason.

Header names are matched case-insensitively (``--map HEADER=column`` renames others); any
other column is kept as a custom attribute whose name is the header in snake case. Names
follow the policy of ``names.py``; numbers are read in the row's region (a ``region``
column, else the file's, else ``DEFAULT_REGION``) and stored in E.164.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import phonenumbers

from errors import InvalidPhone
from names import RefusedText, clean_name, clean_text
from quiet import zone
from sms import PLACEHOLDERS, normalize_phone

COLUMNS = ("external_ref", "first_name", "last_name", "phone", "region", "time_zone", "sms_opt_in",
           "opt_in_at", "opt_in_source", "tags", "qr_code", "landline")
#: Columns an export adds (what the database derived): an import reads past them.
EXPORT_ONLY = ("phone_e164", "suppressed", "suppression_source")
IGNORED = frozenset(EXPORT_ONLY)
TRUE = frozenset({"1", "y", "yes", "true", "t", "on", "opted in", "opt-in", "opt in", "subscribed", "x",
                  "oui", "si", "sí", "ja"})
FALSE = frozenset({"0", "n", "no", "false", "f", "off", "opted out", "opt-out", "opt out", "unsubscribed",
                   "non", "nein"})
_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_HEADER = re.compile(r"^[a-z0-9 _-]+$")
_QR_CODE = re.compile(r"^[A-Za-z0-9_-]{4,32}$")


class FileError(ValueError):
    """The file as a whole cannot be imported (one line for the operator)."""


class RowRejected(ValueError):
    def __init__(self, column: str, reason: str, detail: str) -> None:
        super().__init__(f"{column}: {reason} ({detail})")
        self.column, self.reason, self.detail = column, reason, detail


@dataclass
class CleanRow:
    line: int
    phone: str
    phone_e164: str
    #: The row as the file has it, by its own headers (for the rejects file).
    raw: dict = field(default_factory=dict)
    external_ref: str | None = None
    first_name: str = ""
    last_name: str = ""
    region: str | None = None
    time_zone: str | None = None
    subscribed: bool = True
    consent_at: dt.datetime | None = None
    consent_source: str | None = None
    tags: set[str] = field(default_factory=set)
    qr_code: str | None = None
    #: The file says the number does not take SMS.
    landline: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    #: The fields this file carries (an absent column leaves a customer's value alone).
    present: frozenset[str] = frozenset()
    tags_present: bool = False
    attributes_present: bool = False

    @property
    def key(self) -> str:
        return f"ref:{self.external_ref}" if self.external_ref else f"phone:{self.phone_e164}"


def attribute_name(header: str) -> str:
    """"External Ref" -> "external_ref"; a header with other characters keeps them (and is
    then refused as an attribute name: a placeholder is plain ASCII)."""
    text = header.strip().lower()
    return re.sub(r"[ \-]+", "_", text).strip("_") if _HEADER.match(text) else text


def header_map(header: list[str], renames: dict[str, str]) -> dict[int, str]:
    """Column position -> canonical column (or ``attr:NAME``); FileError for a file without
    a phone column, with a column named twice, or with a custom attribute named like a
    built-in placeholder (``{name}``, ``{short_url}``: a template could not tell them apart)."""
    lowered = {attribute_name(k): v.strip().lower() for k, v in renames.items()}
    for target in lowered.values():
        if target not in COLUMNS:
            raise FileError(f"--map target {target!r} is not one of {', '.join(COLUMNS)}")
    columns: dict[int, str] = {}
    reserved: list[str] = []
    for position, name in enumerate(header):
        key = attribute_name(name.lstrip("\ufeff"))  # "External Ref" is external_ref
        canonical = lowered.get(key, key)
        if canonical in IGNORED:
            canonical = f"ignored:{canonical}"
        elif canonical not in COLUMNS:
            attribute = key
            if attribute in PLACEHOLDERS:
                reserved.append(f"column {position + 1} ({name.strip()[:40]!r}) has the name of a placeholder the "
                                "product fills: rename it in the file, or map it with --map HEADER=first_name")
            elif not _ATTRIBUTE.match(attribute):
                raise FileError(f"column {position + 1} ({name.strip()[:40]!r}) cannot be an attribute name: "
                                "rename it with --map or give it a name made of letters, digits and _")
            canonical = f"attr:{attribute}"
        if canonical in columns.values():
            raise FileError(f"column {canonical.removeprefix('attr:')!r} appears twice in the header")
        columns[position] = canonical
    if "phone" not in columns.values():
        raise FileError("the file has no phone column (use --map HEADER=phone)")
    if reserved:
        raise FileError(reserved[0])
    return columns


class RowCleaner:
    """Cleans rows of one file. Parameters: ``columns`` from ``header_map``,
    ``default_region`` for rows without a region, ``assume_opt_in`` when the file has no
    ``sms_opt_in`` column."""

    def __init__(self, columns: dict[int, str], *, default_region: str, assume_opt_in: bool) -> None:
        self.columns = columns
        self.default_region = default_region.upper()
        self.assume_opt_in = assume_opt_in
        names = set(columns.values())
        self.present = frozenset(
            {"phone", "phone_e164", "region"}
            | ({"first_name"} & names) | ({"last_name"} & names) | ({"time_zone"} & names)
            | ({"subscribed"} if "sms_opt_in" in names else set())
            | ({"consent_at"} if "opt_in_at" in names else set())
            | ({"consent_source"} if "opt_in_source" in names else set())
        )
        self.attribute_names = {c[5:] for c in names if c.startswith("attr:")}

    def clean(self, values: list[str], line: int) -> CleanRow:
        if len(values) > len(self.columns):
            raise RowRejected("-", "extra_fields", f"{len(values)} fields for {len(self.columns)} columns")
        cell = {self.columns[i]: v for i, v in enumerate(values)}
        region = (cell.get("region") or "").strip().upper() or self.default_region
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise RowRejected("region", "invalid_region", f"{region[:8]!r} is not a country code such as US or FR")
        try:
            e164 = normalize_phone(cell.get("phone"), region)
        except InvalidPhone as exc:
            raise RowRejected("phone", exc.code, exc.reason) from None
        row = CleanRow(line=line, phone=cell["phone"].strip(), phone_e164=e164, region=region,
                       present=self.present, tags_present="tags" in cell, attributes_present=bool(self.attribute_names))
        row.external_ref = self._text(cell, "external_ref", 100) or None
        for name in ("first_name", "last_name"):
            try:
                setattr(row, name, clean_name(cell.get(name), max_length=100))
            except RefusedText as exc:
                raise RowRejected(name, exc.code, str(exc)) from None
        row.time_zone = (cell.get("time_zone") or "").strip() or None
        if row.time_zone and zone(row.time_zone) is None:
            raise RowRejected("time_zone", "invalid_time_zone", f"{row.time_zone[:40]!r} is not an IANA time zone")
        row.subscribed = self._consent(cell)
        row.consent_at = self._when(cell)
        row.consent_source = self._text(cell, "opt_in_source", 200) or None
        for tag in (cell.get("tags") or "").split(";"):
            cleaned = self._clean(tag, "tags", 64).lower()
            if cleaned:
                row.tags.add(cleaned)
        code = (cell.get("qr_code") or "").strip()
        if code and not _QR_CODE.match(code):
            raise RowRejected("qr_code", "invalid_qr_code", "4 to 32 letters, digits, - or _")
        row.qr_code = code or None
        flag = " ".join((cell.get("landline") or "").split()).lower()
        if flag and flag not in TRUE | FALSE:
            raise RowRejected("landline", "invalid_landline", f"{flag[:20]!r} is neither yes nor no")
        row.landline = flag in TRUE
        row.attributes = {name[5:]: cleaned for name, value in cell.items() if name.startswith("attr:")
                          for cleaned in [self._clean(value, name[5:], 200)] if cleaned}  # an empty cell sets nothing
        return row

    def _consent(self, cell: dict) -> bool:
        if "sms_opt_in" not in cell:
            return self.assume_opt_in
        value = " ".join(cell["sms_opt_in"].split()).lower()
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise RowRejected("sms_opt_in", "invalid_consent" if value else "missing_consent",
                          f"{value[:20]!r} is neither yes nor no" if value else "empty")

    def _when(self, cell: dict) -> dt.datetime | None:
        text = (cell.get("opt_in_at") or "").strip()
        if not text:
            return None
        try:
            parsed = dt.datetime.fromisoformat(text)
            return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed
        except (ValueError, OverflowError):
            raise RowRejected("opt_in_at", "invalid_date", f"{text[:30]!r} is not an ISO date such as 2026-05-01") from None

    def _text(self, cell: dict, name: str, max_length: int) -> str:
        return self._clean(cell.get(name), name, max_length)

    @staticmethod
    def _clean(value: str | None, column: str, max_length: int) -> str:
        try:
            return clean_text(value, max_length=max_length)
        except RefusedText as exc:
            raise RowRejected(column, exc.code, str(exc)) from None
