"""Peewee models: the database is the source of truth; Redis only carries IDs.

Every (campaign, customer) pair gets exactly one ``Message`` row (a unique index), and that
row's status is the customer's outcome for the campaign. ``CampaignAnalytics`` is always
recomputed from those rows, never incremented, so it cannot drift from them.
"""

from __future__ import annotations

import datetime as dt
import json

from peewee import (
    AutoField,
    BooleanField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from connections import (  # re-exported: the models' database and clock
    HotStatement,
    PooledPostgres,
    configure_database,
    connection,
    database,
    is_postgres,
    set_clock,
    sync_clock,
    utcnow,
    write_transaction,
)


class BaseModel(Model):
    class Meta:
        database = database


class Customer(BaseModel):
    first_name = CharField(max_length=100, default="")
    last_name = CharField(max_length=100, default="")
    phone = CharField(max_length=40, null=True)
    phone_e164 = CharField(max_length=20, null=True, index=True)
    time_zone = CharField(max_length=64, null=True)
    sms_subscribed = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow)
    #: The customer's id in the team's own system: the import's upsert key.
    external_ref = CharField(max_length=100, null=True, unique=True)
    #: The country (ISO 3166 alpha-2) the phone number was read in.
    region = CharField(max_length=2, null=True)
    #: When and where consent was given, as the import said.
    consent_at = DateTimeField(null=True)
    consent_source = CharField(max_length=200, null=True)
    #: Custom attributes from the import's other columns (a JSON object of strings).
    attributes = TextField(null=True)
    updated_at = DateTimeField(null=True)

    def attribute_values(self) -> dict[str, str]:
        return json.loads(self.attributes) if self.attributes else {}


#: A row written by hand, before its number was stored in E.164, is found by its raw phone
#: (``consent.customers_for_phone``): a small index, of those rows only.
Customer.add_index(Customer.index(Customer.phone, name="customer_phone_without_e164").where(Customer.phone_e164.is_null()))


class CustomerTag(BaseModel):
    customer = ForeignKeyField(Customer, backref="tags", on_delete="CASCADE")
    tag = CharField(max_length=64, index=True)

    class Meta:
        indexes = ((("customer", "tag"), True),)


class CustomAttribute(BaseModel):
    """A custom attribute some import brought in: templates may use it as a placeholder."""

    name = CharField(max_length=64, unique=True)
    created_at = DateTimeField(default=utcnow)


class QRCode(BaseModel):
    customer = ForeignKeyField(Customer, backref="qr_codes", unique=True, on_delete="CASCADE")
    code = CharField(max_length=32, unique=True)


class CampaignStatus:
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    COMPLETED = "completed"
    FAILED = "failed"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    FINISHED = (COMPLETED, FAILED, CANCELLED)


class Campaign(BaseModel):
    name = CharField(max_length=200)
    template = TextField()
    status = CharField(max_length=16, default=CampaignStatus.DRAFT, index=True)
    status_reason = TextField(null=True)
    rate_limit = CharField(max_length=40, null=True)
    time_zone = CharField(max_length=64, null=True)
    send_at = DateTimeField(null=True)
    dispatch_token = CharField(max_length=32, null=True)
    heartbeat_at = DateTimeField(null=True)
    fanout_done_at = DateTimeField(null=True)
    #: The fan-out's own sign of life (the dispatcher's is ``heartbeat_at``): a fan-out that
    #: died is restarted even while its dispatcher goes on.
    fanout_beat_at = DateTimeField(null=True)
    #: The recipients' time zones (a JSON list), gathered by the fan-out.
    zones = TextField(null=True)
    #: Who the campaign targets (``audience.py``): a JSON object of tag lists, e.g.
    #: {"all": ["vip"], "any": [], "none": ["staff"]}; None targets every customer.
    audience = TextField(null=True)
    #: Customers whose number any campaign texted in the last this many hours are skipped.
    frequency_cap_h = IntegerField(null=True)
    #: Replace characters that have a GSM-7 look-alike before measuring (``overflow.py``);
    #: None (a campaign of an earlier version) is on.
    smart_encoding = BooleanField(null=True, default=True)
    #: A message that still does not fit: fail, transliterate or segments:N (None: fail).
    on_overflow = CharField(max_length=16, null=True)
    #: The language of its footer (``languages.py``); None (rows from before) is English.
    language = CharField(max_length=8, null=True, default="en")
    #: The campaign's sender (``senders.py``): a number, or a messaging service, at most one
    #: set; fixed at creation, or at the start for a campaign created without one.
    from_number = CharField(max_length=20, null=True)
    messaging_service_sid = CharField(max_length=34, null=True)
    #: When Twilio's 30022 last lowered ``rate_limit`` (``signal_actions``): once a minute at most.
    slowed_at = DateTimeField(null=True)

    def recipient_zones(self) -> list[str]:
        """The time zones of the campaign's recipients, as far as the fan-out got."""
        return json.loads(self.zones) if self.zones else []
    started_at = DateTimeField(null=True)
    completed_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)


class MessageStatus:
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    OPEN = (PENDING, SENDING)
    ALL = (PENDING, SENDING, SENT, FAILED, SKIPPED, CANCELLED)


class Message(BaseModel):
    """One customer's outcome in one campaign."""

    id = AutoField()
    campaign = ForeignKeyField(Campaign, backref="messages", on_delete="CASCADE", index=False)  # led by the unique index
    #: None once the customer is deleted: the row stays, the campaign's record of that number.
    customer = ForeignKeyField(Customer, backref="messages", null=True, on_delete="SET NULL")
    status = CharField(max_length=16, default=MessageStatus.PENDING)
    to_phone = CharField(max_length=20, null=True)
    body = TextField(null=True)
    encoding = CharField(max_length=8, null=True)
    segments = IntegerField(null=True)
    twilio_sid = CharField(max_length=40, null=True)
    delivery_status = CharField(max_length=16, null=True)
    delivery_error_code = CharField(max_length=16, null=True)
    delivered_at = DateTimeField(null=True)
    error_code = CharField(max_length=32, null=True)
    reason = TextField(null=True)
    attempts = IntegerField(default=0)
    deferrals = IntegerField(default=0)
    queued_at = DateTimeField(null=True)
    sending_at = DateTimeField(null=True)
    #: The first claim's time, never moved: a message is looked for at Twilio since then.
    first_attempt_at = DateTimeField(null=True)
    #: The code of this message's own short link (``links.py``), set when it is rendered.
    link_code = CharField(max_length=16, null=True)
    #: The recipient's time zone as the fan-out found it (quiet hours): the dispatcher does
    #: not enqueue a row while its zone is inside them.
    time_zone = CharField(max_length=64, null=True)
    sent_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("campaign", "customer"), True),)


#: The dispatcher's and the sweeper's view of a campaign's unfinished rows. Partial, so that
#: a row that is done leaves it and recording a result writes one index entry fewer.
Message.add_index(
    Message.index(Message.campaign, Message.status, Message.queued_at, name="message_open_by_campaign")
    .where(Message.status.in_(list(MessageStatus.OPEN)))
)
#: Status callbacks find a message by its SID, inbound STOPs the messages sent to a number.
#: Both cover sent messages only, so claiming a row writes no entry in them.
Message.add_index(
    Message.index(Message.twilio_sid, unique=True, name="message_by_twilio_sid").where(Message.twilio_sid.is_null(False))
)
Message.add_index(
    Message.index(Message.to_phone, name="message_sent_to_phone").where(Message.twilio_sid.is_null(False))
)
#: A short link finds its message; codes are unique across campaigns.
#: The fan-out finds the campaign's row for a number (one message per number); a number
#: never changes once written, so sends still update their rows without index entries.
Message.add_index(Message.index(Message.campaign, Message.to_phone, name="message_by_campaign_phone"))
Message.add_index(
    Message.index(Message.link_code, unique=True, name="message_by_link_code").where(Message.link_code.is_null(False))
)
#: The status report's send rate reads a campaign's most recent sends from here; partial, so
#: rows not sent have no entry.
Message.add_index(
    Message.index(Message.campaign, Message.sent_at, name="message_sent_by_campaign").where(Message.sent_at.is_null(False))
)


def db_datetime(value: dt.datetime):
    """``value`` as the driver takes it in a hand-written statement (as peewee would pass it)."""
    return Message.sent_at.db_value(value)




class CampaignAnalytics(BaseModel):
    campaign = ForeignKeyField(Campaign, backref="analytics", unique=True, on_delete="CASCADE")
    targeted = IntegerField(default=0)
    eligible = IntegerField(default=0)
    pending = IntegerField(default=0)
    sent = IntegerField(default=0)
    failed = IntegerField(default=0)
    skipped = IntegerField(default=0)
    cancelled = IntegerField(default=0)
    segments = IntegerField(default=0)
    delivered = IntegerField(default=0)
    undelivered = IntegerField(default=0)
    unique_clicks = IntegerField(default=0)
    carrier_errors = TextField(default="{}")
    skipped_by_reason = TextField(default="{}")
    failed_by_reason = TextField(default="{}")
    updated_at = DateTimeField(default=utcnow)


class Event(BaseModel):
    """An operator-visible record of something that went wrong outside a message row
    (for example a campaign id that does not exist)."""

    campaign_id = IntegerField(null=True, index=True)
    level = CharField(max_length=8, default="error")
    code = CharField(max_length=40)
    detail = TextField()
    created_at = DateTimeField(default=utcnow)


class OptOutEvent(BaseModel):
    """Every change of a customer's SMS consent, kept for audit."""

    customer = ForeignKeyField(Customer, backref="opt_out_events", null=True, on_delete="SET NULL")
    phone_e164 = CharField(max_length=20, index=True)
    action = CharField(max_length=8)  # "stop" or "start"
    keyword = CharField(max_length=40, null=True)
    message_sid = CharField(max_length=40, null=True, unique=True)
    created_at = DateTimeField(default=utcnow)


class Suppression(BaseModel):
    """A phone number that must not be texted, whoever's row holds it: kept when customer
    rows are deleted or imported again; only a START from the number (or an operator with a
    reason) lifts it (``consent.py``)."""

    phone_e164 = CharField(max_length=20, unique=True)
    #: inbound_stop, twilio_21610, import, operator
    source = CharField(max_length=32)
    reason = CharField(max_length=200, null=True)
    created_at = DateTimeField(default=utcnow)


class Landline(BaseModel):
    """A number known not to take SMS (Twilio 21614 or 30006, or an import saying so): marked
    on the number, not by unsubscribing anyone (``landlines.py``)."""

    phone_e164 = CharField(max_length=20, unique=True)
    code = CharField(max_length=16)
    source = CharField(max_length=32)
    created_at = DateTimeField(default=utcnow)


class EarlyStatus(BaseModel):
    """A delivery report for a SID not recorded yet (see ``delivery.py``)."""

    sid = CharField(max_length=40)
    status = CharField(max_length=16)
    error_code = CharField(max_length=16, null=True)
    received_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("sid", "status"), True),)


class Click(BaseModel):
    """A visit of a customer's short link (link-preview bots excluded)."""

    customer = ForeignKeyField(Customer, backref="clicks", on_delete="CASCADE")
    campaign = ForeignKeyField(Campaign, backref="clicks", null=True, on_delete="SET NULL")
    code = CharField(max_length=32)
    user_agent = CharField(max_length=300, null=True)
    created_at = DateTimeField(default=utcnow)


class TrialSend(BaseModel):
    """A test message an operator sent to their own number (``trial_send.py``): rendered as
    one customer's message would be, counted nowhere (no message row, no analytics), kept
    for the record (who was texted, with what, and Twilio's SID)."""

    campaign_id = IntegerField(index=True)
    #: The customer whose message it shows; None for a built sample customer.
    customer_id = IntegerField(null=True)
    to_phone = CharField(max_length=20)
    body = TextField()
    link_code = CharField(max_length=16, unique=True)
    segments = IntegerField(default=1)
    #: sent or failed
    status = CharField(max_length=16)
    twilio_sid = CharField(max_length=40, null=True, index=True)
    error_code = CharField(max_length=32, null=True)
    reason = TextField(null=True)
    #: What Twilio's status callback last said of it (``delivery.py``).
    delivery_status = CharField(max_length=16, null=True)
    delivery_error_code = CharField(max_length=16, null=True)
    created_at = DateTimeField(default=utcnow)


class InboundMessage(BaseModel):
    """A text a number sent us that was not an opt-out or an opt-in (those are
    ``OptOutEvent`` rows): the inbox (``inbox.py``)."""

    phone_e164 = CharField(max_length=20, index=True)
    customer = ForeignKeyField(Customer, backref="inbound_messages", null=True, on_delete="SET NULL")
    body = TextField()
    message_sid = CharField(max_length=40, unique=True)
    received_at = DateTimeField(default=utcnow)


class SendsPerMinute(BaseModel):
    """A campaign's sends per minute of ``sent_at`` (``sends_series.py``): kept by the analytics
    recompute from the index on (campaign, sent_at), read by the dashboard's chart."""

    campaign = ForeignKeyField(Campaign, on_delete="CASCADE", index=False)  # led by the unique index
    minute = DateTimeField()
    sends = IntegerField(default=0)

    class Meta:
        indexes = ((("campaign", "minute"), True),)


MODELS = [Customer, CustomerTag, CustomAttribute, QRCode, Campaign, Message, CampaignAnalytics, Event, OptOutEvent, Click,
          EarlyStatus, Suppression, Landline, InboundMessage,
          TrialSend, SendsPerMinute]


__all__ = [
    "HotStatement",
    "PooledPostgres",
    "is_postgres",
    "set_clock",
    "sync_clock",

    "Campaign",
    "CampaignAnalytics",
    "CampaignStatus",
    "Customer",
    "Event",
    "Message",
    "MessageStatus",
    "QRCode",
    "configure_database",
    "connection",
    "database",
    "utcnow",
    "write_transaction",
]
