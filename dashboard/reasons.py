"""What each failure, skip and carrier code a campaign page shows means, in one table:
Twilio's error codes as the send path maps them (``smsservice``: per-recipient, sender and
transient errors), the delivery errors of status callbacks (``resend.CURABLE_CARRIER_CODES``
and the others Twilio documents), and the project's own reasons (``message_types.SkipReason``
and the failures the send path records)."""

from __future__ import annotations

from resend import CURABLE_CARRIER_CODES
from smsservice import OPTED_OUT, RECIPIENT_ERRORS, SENDER_ERRORS, TRANSIENT_ERRORS

#: Delivery error codes of status callbacks not already described by the tables above
#: (Twilio's error dictionary, shortened).
CARRIER_CODES = {
    "30002": "account suspended",
    "30004": "message blocked by the recipient or their carrier",
    "30005": "unknown destination handset: the number is not in service",
    "30006": "landline or unreachable carrier",
    "30007": "filtered by the carrier as spam",
    "30022": "the sender's registered throughput was exceeded",
    "30027": "the carrier's daily limit for the sender was reached",
    "30034": "message from an unregistered 10DLC number",
}

#: The project's own reasons (skips at the fan-out or the claim, failures of the send path).
PROJECT_REASONS = {
    "unsubscribed": "the customer is not subscribed to SMS",
    "missing_phone": "the customer has no phone number",
    "invalid_phone": "the phone number is not a valid number",
    "no_qr_code": "the customer has no QR code to link to",
    "suppressed": "the number is on the suppression list (it opted out)",
    "duplicate_phone": "another customer with this number gets this campaign's message",
    "frequency_cap": "another campaign texted this number within the frequency cap",
    "landline": "the number is known not to take SMS",
    "missing_attribute": "a placeholder of the template has no value for this customer",
    "customer_deleted": "the customer was deleted before their turn",
    "too_long": "the message does not fit under the campaign's overflow policy",
    "retries_exhausted": "Twilio could not be reached after every retry (never sent: retry sends it)",
    "unknown_outcome": "Twilio never listed the message after every attempt (retry looks it up first)",
    "too_costly": "the message's segments exceed the rate limit",
    "unknown": "no reason recorded",
}


def _table() -> dict[str, str]:
    table = {str(code): text for group in (RECIPIENT_ERRORS, SENDER_ERRORS, TRANSIENT_ERRORS) for code, text in group.items()}
    table[str(OPTED_OUT)] = "the recipient replied STOP (they are unsubscribed)"
    table.update(CARRIER_CODES)
    table.update({code: text.split(":")[0] for code, text in CURABLE_CARRIER_CODES.items()})
    table.update(PROJECT_REASONS)
    return table


#: Every code the pages may show, with its description.
REASONS = _table()


def describe(code: str) -> str:
    """The description of ``code``, or an honest "no description" for one not in the table."""
    return REASONS.get(str(code), "no description in this table (see Twilio's error dictionary)")


def described(counts: dict[str, int]) -> list[tuple[str, int, str]]:
    """(code, count, description) for each code, the most frequent first."""
    return [(code, n, describe(code)) for code, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
