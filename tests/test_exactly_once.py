"""The traced ways in which a customer was texted twice, texted after STOP, never texted, or a
campaign never finished (issue "Exactly once, for real"), one test per defect, named by its
number in the issue."""

from __future__ import annotations

import datetime as dt

import dramatiq
import pytest

import actors
import analytics
import claims
import dispatch
import fanout
import link_codes
import message_state
import campaigns
import sending
from errors import TransientError
from models import Campaign, CampaignStatus, Customer, Event, Message, MessageStatus, QRCode, utcnow
from tests.factories import make_campaign, make_customers

BASE = "https://x.test/q"


def _send(message_id: int, backend, **options):
    options.setdefault("reconcile_after_s", 1)
    return sending.send_message(message_id, backend=backend, short_url_base=BASE, **options)


def _age_world(fake_twilio, seconds: float) -> None:
    """As if ``seconds`` had passed: Twilio's messages and the rows' times get that much older."""
    fake_twilio.age(seconds)
    shift = dt.timedelta(seconds=seconds)
    for row in Message.select():
        changes = {}
        for name in ("sending_at", "queued_at", "first_attempt_at", "updated_at"):
            value = getattr(row, name, None)
            if value is not None:
                changes[name] = value - shift
        if changes:
            Message.update(**changes).where(Message.id == row.id).execute()


def _one_pending_message(count: int = 1) -> Message:
    make_customers(count)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    return Message.select().where(Message.campaign == campaign_id).order_by(Message.id).first()


def test_defect_1_the_reconciliation_window_is_anchored_on_the_first_attempt(db, fake_twilio, twilio_backend):
    # Given Twilio accepted a message but answered 500, two minutes ago
    row = _one_pending_message()
    fake_twilio.accept_then_fail(1, "500")
    with pytest.raises(TransientError):
        _send(row.id, twilio_backend)
    _age_world(fake_twilio, 120)

    # And the first lookup at Twilio failed (its list answered 500), two more minutes ago
    fake_twilio.fail_lists(1, "500")
    with pytest.raises(TransientError):
        _send(row.id, twilio_backend)
    _age_world(fake_twilio, 120)

    # When the message is reconciled again
    outcome = _send(row.id, twilio_backend)

    # Then the message Twilio accepted four minutes ago is found, not sent again
    assert len(fake_twilio.messages) == 1
    stored = Message.get_by_id(row.id)
    assert outcome.status == MessageStatus.SENT
    assert stored.status == MessageStatus.SENT and stored.twilio_sid == fake_twilio.messages[0]["sid"]


@pytest.mark.parametrize("mode", ["500", "429", "slow"])
def test_defect_2_a_failed_lookup_at_twilio_is_a_transient_error_and_the_row_stays_sending(db, fake_twilio, twilio_backend, mode):
    # Given a maybe-sent message (accepted, then a 500)
    row = _one_pending_message()
    fake_twilio.accept_then_fail(1, "500")
    with pytest.raises(TransientError):
        _send(row.id, twilio_backend)
    _age_world(fake_twilio, 5)

    # When Twilio's message list answers 500 or 429, or too slowly
    fake_twilio.fail_lists(1, mode, seconds=0.8)
    with pytest.raises(TransientError) as failed:
        _send(row.id, twilio_backend)

    # Then it is the project's transient error (retried with its budget), the row still sending
    assert failed.value.code == "lookup_failed"
    assert Message.get_by_id(row.id).status == MessageStatus.SENDING
    # And once the list answers, the message is found, not sent again
    _age_world(fake_twilio, 5)
    assert _send(row.id, twilio_backend).status == MessageStatus.SENT
    assert len(fake_twilio.messages) == 1


def test_defect_3_duplicate_ids_in_one_batch_claim_are_claimed_once(db):
    # Given one pending message requested twice in one batch (two copies of one send_sms)
    row = _one_pending_message()

    # When the batch is claimed
    results = claims.claim_rendered_many([claims.ClaimRequest(row.id, 0), claims.ClaimRequest(row.id, 0)])

    # Then only the first request gets the row, on PostgreSQL as on SQLite
    assert [message is not None for message, _ in results] == [True, False]
    assert Message.get_by_id(row.id).attempts == 1


@pytest.mark.parametrize("change", ["unsubscribed", "no_qr_code"])
def test_defect_4_reconciliation_that_finds_nothing_does_not_resend_after_stop(db, fake_twilio, twilio_backend, change):
    # Given a message whose request failed in a way that leaves it maybe sent (Twilio has none)
    row = _one_pending_message()
    fake_twilio.set_error_rates(rate_500=1.0)
    with pytest.raises(TransientError):
        _send(row.id, twilio_backend)
    fake_twilio.set_error_rates()

    # And the customer replied STOP (or lost their QR code) before the retry
    if change == "unsubscribed":
        Customer.update(sms_subscribed=False).where(Customer.id == row.customer_id).execute()
    else:
        QRCode.delete().where(QRCode.customer == row.customer_id).execute()
    _age_world(fake_twilio, 5)

    # When the message is reconciled
    outcome = _send(row.id, twilio_backend)

    # Then nothing is sent, and the row is skipped with the reason
    assert fake_twilio.messages == []
    stored = Message.get_by_id(row.id)
    assert outcome.status == stored.status == MessageStatus.SKIPPED
    assert stored.error_code == change


def test_defect_6_a_due_scheduled_campaign_is_started_once(db, stub_broker):
    # Given a campaign scheduled for a minute ago
    make_customers(3)
    campaign_id = make_campaign()
    campaigns.schedule_campaign(campaign_id, utcnow() - dt.timedelta(minutes=1))

    # When a sweep runs
    actors.sweep()

    # Then one fan-out is enqueued, and the campaign is not "restarted" by the same sweep
    queued = [dramatiq.Message.decode(data) for data in stub_broker.queues["campaigns"].queue]
    assert [m.actor_name for m in queued] == ["send_campaign"]
    assert not Event.select().where(Event.code == "campaign_restarted").exists()
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING


def test_defect_7_a_number_that_answers_500_forever_settles_failed(db, fake_twilio, twilio_backend):
    # Given a number for which Twilio answers 500 to every request, and creates nothing
    row = _one_pending_message()
    fake_twilio.set_error_rates(rate_500=1.0)

    # When the message is retried (and reconciled) more often than its attempt budget
    for _ in range(6):
        try:
            _send(row.id, twilio_backend, max_attempts=4)
        except TransientError:
            pass
        _age_world(fake_twilio, 5)

    # Then it settled failed with unknown_outcome after 4 requests, and the campaign completes
    stored = Message.get_by_id(row.id)
    assert stored.status == MessageStatus.FAILED and stored.error_code == "unknown_outcome"
    assert len(fake_twilio.requests) == 4 and fake_twilio.messages == []
    Campaign.update(fanout_done_at=utcnow()).where(Campaign.id == row.campaign_id).execute()
    analytics.recompute_analytics(row.campaign_id)
    assert Campaign.get_by_id(row.campaign_id).status == CampaignStatus.COMPLETED


def test_defect_8_the_error_storm_check_counts_attempts_only(db):
    # Given a list where 25 customers' messages failed at the fan-out (too long) and 5 were sent
    make_customers(25, first_name="Zoë" + "x" * 60)
    make_customers(5)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    assert Message.select().where(Message.error_code == "too_long").count() == 25
    pending = [m.id for m in Message.select().where(Message.status == MessageStatus.PENDING)]
    Message.update(status=MessageStatus.SENT, attempts=1).where(Message.id.in_(pending)).execute()

    # When the error-storm check runs
    paused = analytics.check_error_storm(campaign_id, window=50, min_attempts=5, ratio=0.8)

    # Then the campaign is not paused: no attempt failed
    assert not paused
    assert Campaign.get_by_id(campaign_id).status == CampaignStatus.SENDING



def test_defect_6_rows_another_dispatcher_marked_since_they_were_read_are_not_enqueued_again(db):
    # Given a campaign's fresh rows, read by one dispatcher
    make_customers(4)
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    fresh = (Message.status == MessageStatus.PENDING) & Message.queued_at.is_null()
    read = [m.id for m in Message.select(Message.id).where(fresh)]

    # When another dispatcher marks two of them first, then this one marks what it read
    assert message_state.mark_queued(read[:2], fresh) == read[:2]
    marked = message_state.mark_queued(read, fresh)

    # Then this one enqueues only the two nobody had taken
    assert marked == read[2:]


def test_defect_5_a_maybe_sent_message_never_adopts_another_campaigns_message(db, fake_twilio, twilio_backend):
    # Given one customer, and two campaigns with the same template
    make_customers(1)
    first, second = make_campaign(name="A"), make_campaign(name="B")
    for campaign_id in (first, second):
        fanout.fan_out(campaign_id, short_url_base=BASE)
    row_a, row_b = (Message.get(Message.campaign == c) for c in (first, second))
    assert row_a.body != row_b.body  # each message has a link of its own

    # And A was sent; B's request failed without Twilio creating it (a 500)
    assert _send(row_a.id, twilio_backend).status == MessageStatus.SENT
    fake_twilio.set_error_rates(rate_500=1.0)
    with pytest.raises(TransientError):
        _send(row_b.id, twilio_backend)
    fake_twilio.set_error_rates()
    _age_world(fake_twilio, 5)

    # When B is reconciled
    outcome = _send(row_b.id, twilio_backend)

    # Then B was not taken for A's message: it is sent, with a SID of its own
    assert outcome.status == MessageStatus.SENT
    assert [m["body"] for m in fake_twilio.messages] == [row_a.body, row_b.body]
    assert Message.get_by_id(row_b.id).twilio_sid == fake_twilio.messages[1]["sid"]


def test_defect_5_reconciliation_matches_the_sender_too(db, fake_twilio, twilio_backend):
    # Given a maybe-sent message, and a message with the same text to the same number from
    # another of the account's numbers
    from smsservice import make_backend
    from tests.conftest import twilio_settings

    row = _one_pending_message()
    fake_twilio.set_error_rates(rate_500=1.0)
    with pytest.raises(TransientError):
        _send(row.id, twilio_backend)
    fake_twilio.set_error_rates()
    row = Message.get_by_id(row.id)
    make_backend(twilio_settings(fake_twilio, twilio_from_number="+12125550199")).send(to=row.to_phone, body=row.body)
    _age_world(fake_twilio, 5)

    # When it is reconciled
    _send(row.id, twilio_backend)

    # Then the other sender's message is not taken for it: it is sent from this sender
    assert [m["from"] for m in fake_twilio.messages] == ["+12125550199", "+12125550100"]
    assert Message.get_by_id(row.id).twilio_sid == fake_twilio.messages[1]["sid"]


class _Interrupt(BaseException):
    """What an asynchronous time limit raises in a thread."""


class _SlotsThatBreak:
    """An ``acquire_slot`` whose batch step fails after the claim's statement committed."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def group(self, campaign_id):
        raise self.error

    def take_many(self, costs, campaign_id):
        return [None] * len(costs)

    def __call__(self, cost, campaign_id, first=None):
        return None


@pytest.mark.parametrize("error", [RuntimeError("the batch failed"), _Interrupt()], ids=["error", "interrupt"])
def test_defect_11_a_claim_batch_that_fails_after_its_statement_leaves_the_row_pending(db, fake_twilio, twilio_backend, error):
    # Given a pending message
    row = _one_pending_message()

    # When its claim's batch fails (or its thread is interrupted) after the claim committed
    with pytest.raises(type(error)):
        _send(row.id, twilio_backend, acquire_slot=_SlotsThatBreak(error))

    # Then nothing was sent, and the claim was undone: the next copy sends it at once
    stored = Message.get_by_id(row.id)
    assert fake_twilio.messages == []
    assert (stored.status, stored.attempts) == (MessageStatus.PENDING, 0)
    assert _send(row.id, twilio_backend).status == MessageStatus.SENT
    assert len(fake_twilio.messages) == 1


def test_defect_10_a_worker_whose_clock_is_behind_does_not_open_the_in_flight_guard(postgres_db, fake_twilio, twilio_backend):
    # Given host A, whose clock is 90 s behind the database's, is sending a message (its
    # request to Twilio is still on the way)
    import threading

    from dbclock import DatabaseClock, system_utcnow
    from models import set_clock

    row = _one_pending_message()
    behind = DatabaseClock(local=lambda: system_utcnow() - dt.timedelta(seconds=90))
    correct = set_clock(behind)
    postgres_db.close()
    postgres_db.connect()  # a connection of host A's measures its offset
    released, in_twilio = threading.Event(), threading.Event()

    class SlowBackend:
        def send(self, *, to, body, sender=None, valid_for_s=None):
            in_twilio.set()
            released.wait(10)
            return twilio_backend.send(to=to, body=body, sender=sender, valid_for_s=valid_for_s)

        def find_sent(self, **kwargs):
            return twilio_backend.find_sent(**kwargs)

    host_a = threading.Thread(target=lambda: _send(row.id, SlowBackend(), reconcile_after_s=30))
    host_a.start()
    try:
        assert in_twilio.wait(10)
        # When host B, whose clock is right, meets the same message (a duplicate broker message)
        set_clock(correct)
        with pytest.raises(TransientError) as later:
            _send(row.id, twilio_backend, reconcile_after_s=30)
    finally:
        released.set()
        host_a.join(10)
        set_clock(correct)

    # Then B waits for A's request instead of looking it up at Twilio and sending it again
    assert later.value.code == "in_flight"
    assert len(fake_twilio.messages) == 1
    assert abs(behind.offset.total_seconds() - 90) < 2


def test_defect_9_rows_inside_quiet_hours_are_not_claimed_and_wake_at_the_dispatchers_pace(db):
    # Given 6 New York and 2 Los Angeles customers, and 21:00 in New York (18:00 in LA)
    from quiet import QuietHours

    ids = make_customers(8)
    for n, customer_id in enumerate(ids[:6]):  # New York numbers, one per person
        Customer.update(phone=f"+1212555012{n}").where(Customer.id == customer_id).execute()
    Customer.update(time_zone="America/Los_Angeles").where(Customer.id.in_(ids[6:])).execute()
    campaign_id = make_campaign()
    token = fanout.fan_out(campaign_id, short_url_base=BASE).dispatch_token
    new_york = dt.timezone(dt.timedelta(hours=-5))
    clock = {"now": dt.datetime(2026, 11, 30, 21, 0, tzinfo=new_york).astimezone(dt.timezone.utc).replace(tzinfo=None)}
    hours = QuietHours.parse("21:00-08:00")

    def run_dispatcher(max_inflight):
        enqueued: list[int] = []
        result = dispatch.dispatch(campaign_id, token, enqueue=lambda campaign, ids: enqueued.extend(ids),
                                    max_inflight=max_inflight, requeue_after_s=600, quiet_hours=hours, clock=lambda: clock["now"])
        return result, enqueued

    # When the dispatcher runs at night
    result, enqueued = run_dispatcher(max_inflight=10)

    # Then only the Los Angeles rows are enqueued; New York's stay pending, untouched, until 08:00
    la_rows = [m.id for m in Message.select().where(Message.customer.in_(ids[6:]))]
    assert sorted(enqueued) == sorted(la_rows)
    assert Message.select().where(Message.customer.in_(ids[:6]), Message.queued_at.is_null(False)).count() == 0
    assert result.again and result.quiet_until == dt.datetime(2026, 12, 1, 13, 0)

    # When it is 08:00 in New York, with room for 4 in flight (the 2 LA ones were sent)
    Message.update(status=MessageStatus.SENT).where(Message.id.in_(la_rows)).execute()
    clock["now"] = dt.datetime(2026, 12, 1, 13, 0)
    _, woken = run_dispatcher(max_inflight=4)

    # Then New York wakes at the dispatcher's pace, not all at once
    assert len(woken) == 4


def test_failed_lookups_at_twilio_do_not_use_up_the_attempt_budget(db, fake_twilio, twilio_backend):
    # Given a message whose request got a 500 before Twilio created anything
    row = _one_pending_message()
    fake_twilio.set_error_rates(rate_500=1.0)
    with pytest.raises(TransientError):
        _send(row.id, twilio_backend, max_attempts=3)
    fake_twilio.set_error_rates()

    # When Twilio's message list fails five times in a row (more than the budget of 3)
    fake_twilio.fail_lists(5, "500")
    for _ in range(5):
        _age_world(fake_twilio, 5)
        with pytest.raises(TransientError):
            _send(row.id, twilio_backend, max_attempts=3)
    _age_world(fake_twilio, 5)
    outcome = _send(row.id, twilio_backend, max_attempts=3)

    # Then, once the list answers and has nothing, the message is sent, not given up
    assert outcome.status == MessageStatus.SENT and len(fake_twilio.messages) == 1


def test_a_customer_who_unsubscribed_is_skipped_even_when_the_attempt_budget_is_spent(db, fake_twilio, twilio_backend):
    # Given a message that has used its budget of requests (Twilio answering 500, creating nothing)
    row = _one_pending_message()
    fake_twilio.set_error_rates(rate_500=1.0)
    for _ in range(2):
        with pytest.raises(TransientError):
            _send(row.id, twilio_backend, max_attempts=2)
        _age_world(fake_twilio, 5)

    # When the customer unsubscribes before the next reconciliation
    Customer.update(sms_subscribed=False).where(Customer.id == row.customer_id).execute()
    _send(row.id, twilio_backend, max_attempts=2)

    # Then the row says what is true of it: skipped, unsubscribed
    stored = Message.get_by_id(row.id)
    assert (stored.status, stored.error_code) == (MessageStatus.SKIPPED, "unsubscribed")


def test_defect_5_a_template_without_its_link_is_refused_before_anyone_is_targeted(db):
    # Given a campaign whose template has no {short_url} (every message would read the same)
    make_customers(2)
    campaign_id = make_campaign("Sale today!")

    # When it is started
    result = fanout.fan_out(campaign_id, short_url_base=BASE)

    # Then it fails with the reason, and nobody is targeted
    campaign = Campaign.get_by_id(campaign_id)
    assert result.status == CampaignStatus.FAILED and "{short_url}" in campaign.status_reason
    assert Message.select().count() == 0


def test_link_codes_in_use_by_a_message_or_a_qr_code_are_not_drawn_again(db):
    # Given a customer's QR code and a message's link code
    (customer,) = make_customers(1)
    qr_code = QRCode.get(QRCode.customer == customer).code
    campaign_id = make_campaign()
    fanout.fan_out(campaign_id, short_url_base=BASE)
    link_code = Message.get(Message.campaign == campaign_id).link_code

    # Then the fan-out's check finds both among candidate codes, and only those
    assert link_codes.codes_in_use([qr_code, link_code, "ZZZZZZZZ"]) == {qr_code, link_code}


def test_defect_6_the_schedules_own_delayed_fan_out_finds_the_campaign_started(db, stub_broker):
    # Given a scheduled campaign that a sweep has just started (with its dispatch token)
    make_customers(3)
    campaign_id = make_campaign()
    campaigns.schedule_campaign(campaign_id, utcnow() - dt.timedelta(seconds=1))
    ((started_id, token),) = campaigns.start_due_campaigns()

    # When the schedule's own delayed send_campaign arrives too (it carries no token)
    late = fanout.fan_out(campaign_id, short_url_base=BASE)

    # Then it does nothing; the sweep's fan-out, with the token, is the one that runs
    assert late.status == "already_started" and Message.select().count() == 0
    assert Campaign.get_by_id(campaign_id).dispatch_token == token
    assert fanout.fan_out(campaign_id, short_url_base=BASE, token=token).recorded == 3
    assert fanout.fan_out(campaign_id, short_url_base=BASE).status == "already_started"


def test_a_fan_out_that_died_is_restarted_even_while_its_dispatcher_goes_on(db):
    # Given a campaign whose fan-out died a while ago (a kill -9 during the fan-out), while
    # its dispatcher chain still runs and keeps the campaign's heartbeat fresh
    make_customers(3)
    campaign_id = make_campaign()
    long_ago = utcnow() - dt.timedelta(minutes=10)
    Campaign.update(status=CampaignStatus.SENDING, dispatch_token="old", fanout_beat_at=long_ago,
                    heartbeat_at=utcnow()).where(Campaign.id == campaign_id).execute()
    restarted = []

    # When a sweep runs
    result = campaigns.sweep(
        stale_after_s=lambda campaign: 60, restart_fan_out=lambda cid, token: restarted.append((cid, token)),
        restart_dispatch=lambda cid, token: pytest.fail("the dispatcher is alive"), request_metrics=lambda cid: None,
    )

    # Then the fan-out is restarted with the campaign's new token, which the old chain lacks
    assert result.restarted == [campaign_id] and restarted == [(campaign_id, Campaign.get_by_id(campaign_id).dispatch_token)]
    assert restarted[0][1] != "old"
    assert fanout.fan_out(campaign_id, short_url_base=BASE, token=restarted[0][1]).recorded == 3


def test_defect_6_two_dispatchers_that_read_the_same_rows_at_once_enqueue_each_row_once(postgres_db):
    # Given a campaign's fresh rows, and another transaction holding their row locks, so that
    # two dispatcher chains (a restarted one beside a late one) both read the rows and then
    # wait, each at its mark, as a race between select and mark would have them
    import threading

    import psycopg2

    from tests.conftest import POSTGRES_URL

    make_customers(6)
    campaign_id = make_campaign()
    token = fanout.fan_out(campaign_id, short_url_base=BASE).dispatch_token
    blocker = psycopg2.connect(POSTGRES_URL)
    blocker.autocommit = False
    with blocker.cursor() as cursor:
        cursor.execute("SELECT id FROM message WHERE campaign_id = %s FOR UPDATE", (campaign_id,))
    enqueued: list[int] = []
    lock = threading.Lock()

    def chain():
        def enqueue(campaign, ids):
            with lock:
                enqueued.extend(ids)

        with postgres_db.connection_context():
            dispatch.dispatch(campaign_id, token, enqueue=enqueue, max_inflight=100, requeue_after_s=600)

    chains = [threading.Thread(target=chain) for _ in range(2)]
    for thread in chains:
        thread.start()
    try:
        def waiting_at_their_marks() -> int:
            # (asked on a connection of its own: a transaction keeps one snapshot of the view)
            with psycopg2.connect(POSTGRES_URL) as watcher, watcher.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                               " AND query LIKE 'UPDATE \"message\"%%'")
                count = cursor.fetchone()[0]
            watcher.close()
            return count

        deadline = dt.datetime.now() + dt.timedelta(seconds=10)
        while waiting_at_their_marks() < 2 and dt.datetime.now() < deadline:
            threading.Event().wait(0.02)
        assert waiting_at_their_marks() == 2

        # When the lock is released and both marks go ahead
        blocker.rollback()
    finally:
        blocker.close()
        for thread in chains:
            thread.join(10)

    # Then every row was enqueued once, by one of the two
    rows = [m.id for m in Message.select(Message.id).where(Message.campaign == campaign_id)]
    assert sorted(enqueued) == sorted(rows)
