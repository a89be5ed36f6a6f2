"""Group commit (``batching.Combiner``): threads' requests share batches, nobody waits for
company, every caller gets its own answer or its batch's error. Write-behind
(``batching.WriteBehind``): every item written once, failed writes tried again, nothing
silently dropped at shutdown."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from batching import BatchInterrupted, Combiner, WriteBehind, _Request


class Doubler:
    """A batch function that records its batches and can be held open."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.interrupt_on: int | None = None

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        self.gate.wait(5)
        if self.interrupt_on in items:
            raise ThreadKiller()
        if self.fail_next:
            self.fail_next = False
            raise ValueError("database went away")
        return [item * 2 for item in items]


class ThreadKiller(BaseException):
    """Not an error to retry or to share with a batch: it ends the thread (an asynchronous
    time limit, an exit)."""


def wait_for(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def submit_in_threads(combiner: Combiner, items, results: dict, errors: dict) -> list[threading.Thread]:
    def call(item):
        try:
            results[item] = combiner.submit(item)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it, interrupts included
            errors[item] = exc

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return threads


def queue_behind_a_running_batch(combiner: Combiner, run: Doubler, first: int, others: list[int], results, errors):
    """Start a batch of ``first`` that holds until ``run.gate`` is set, then have ``others``
    ask meanwhile; returns every thread, once the others are all waiting."""
    run.gate.clear()
    threads = submit_in_threads(combiner, [first], results, errors)
    assert run.entered.wait(5)
    threads += submit_in_threads(combiner, others, results, errors)
    wait_for(lambda: combiner.waiting == len(others))
    return threads


def finish(run: Doubler, threads: list[threading.Thread]) -> None:
    run.gate.set()
    for thread in threads:
        thread.join(5)


def test_a_lone_request_runs_at_once_on_its_own():
    run = Doubler()
    combiner = Combiner(run)
    assert combiner.submit(21) == 42
    assert run.batches == [[21]]


def test_requests_arriving_during_a_batch_share_the_next_one():
    # Given a batch in progress, and five more threads asking meanwhile
    run = Doubler()
    combiner = Combiner(run)
    results, errors = {}, {}
    threads = queue_behind_a_running_batch(combiner, run, 1, [2, 3, 4, 5, 6], results, errors)

    # When the batch ends
    finish(run, threads)

    # Then the five ran together in one statement, and each got its own answer
    assert run.batches == [[1], [2, 3, 4, 5, 6]]
    assert results == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert errors == {}


def test_a_failed_batch_fails_each_of_its_callers_and_no_other():
    # Given a batch in progress that will fail, and two requests waiting behind it
    run = Doubler()
    combiner = Combiner(run)
    run.fail_next = True
    results, errors = {}, {}
    threads = queue_behind_a_running_batch(combiner, run, 1, [2, 3], results, errors)

    # When it ends
    finish(run, threads)

    # Then its caller got the error, and the next batch ran as usual
    assert isinstance(errors.pop(1), ValueError)
    assert errors == {}
    assert results == {2: 4, 3: 6}


def test_batches_are_capped_and_the_rest_led_by_their_own_threads():
    # Given batches of at most two, and five requests behind a running batch
    run = Doubler()
    combiner = Combiner(run, max_batch=2)
    results, errors = {}, {}
    threads = queue_behind_a_running_batch(combiner, run, 0, [1, 2, 3, 4, 5], results, errors)

    # When it ends
    finish(run, threads)

    # Then the five ran two, two and one at a time, each answered
    assert [len(batch) for batch in run.batches] == [1, 2, 2, 1]
    assert sorted(item for batch in run.batches for item in batch) == [0, 1, 2, 3, 4, 5]
    assert results == {i: 2 * i for i in range(6)}


def test_a_batch_that_answers_wrongly_is_an_error_for_its_callers():
    combiner = Combiner(lambda items: [])
    with pytest.raises(RuntimeError, match="gave 0 results"):
        combiner.submit(1)


def test_a_waiting_thread_that_dies_leaves_nobody_stuck():
    # Given a request whose thread will never come back for it (as after an asynchronous
    # time limit), queued behind a running batch together with a live one
    run = Doubler()
    combiner = Combiner(run, max_batch=1, poll_s=0.01)
    results, errors = {}, {}
    threads = queue_behind_a_running_batch(combiner, run, 1, [2], results, errors)
    combiner._waiting.appendleft(_Request(99))  # an orphan at the head of the queue

    # When the batch ends
    finish(run, threads)

    # Then the live request was still served, by its own thread
    assert results == {1: 2, 2: 4}
    assert [99] in run.batches


def test_the_others_in_an_interrupted_batch_are_told_so():
    # Given two requests waiting behind a batch, and a database call that will be interrupted
    run = Doubler()
    combiner = Combiner(run)
    results, errors = {}, {}
    run.interrupt_on = 2
    threads = queue_behind_a_running_batch(combiner, run, 1, [2, 3], results, errors)

    # When the first batch ends and the thread running the second (2 and 3) is interrupted
    finish(run, threads)

    # Then that thread got the interrupt, and the other ``BatchInterrupted``
    assert run.batches == [[1], [2, 3]] and results == {1: 2}
    assert len(errors) == 2 and {type(error) for error in errors.values()} == {BatchInterrupted, ThreadKiller}


def test_a_waiting_thread_interrupted_withdraws_its_request():
    # Given two requests waiting behind a running batch
    run = Doubler()
    combiner = Combiner(run, poll_s=0.01)
    results, errors = {}, {}
    threads = queue_behind_a_running_batch(combiner, run, 1, [2, 3], results, errors)

    # When the thread of request 2 is interrupted as Dramatiq's time limit does it (an
    # exception raised in the thread from outside), and the running batch then ends
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threads[1].ident), ctypes.py_object(ThreadKiller))
    wait_for(lambda: combiner.waiting == 1)
    finish(run, threads)

    # Then request 2 never ran (its thread is gone), and request 3 was answered
    assert run.batches == [[1], [3]]
    assert results == {1: 2, 3: 6} and isinstance(errors[2], ThreadKiller)


class Ledger:
    """A write function that records what it wrote, and fails while told to."""

    def __init__(self, failures: int = 0) -> None:
        self.written: list[int] = []
        self.batches = 0
        self.failures = failures
        self.calls = 0

    def __call__(self, items: list[int]) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database went away")
        self.batches += 1
        self.written += items


def test_write_behind_writes_each_item_of_many_threads_exactly_once():
    # Given a writer, and eight threads putting 500 items each
    ledger, after = Ledger(), []
    writer = WriteBehind(ledger, on_written=after.extend)
    threads = [threading.Thread(target=lambda t=t: [writer.put(t * 1000 + i) for i in range(500)]) for t in range(8)]

    # When they are done and the writer is flushed
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert writer.flush(5)

    # Then every item was written once, and ``on_written`` saw each after its write
    expected = sorted(t * 1000 + i for t in range(8) for i in range(500))
    assert sorted(ledger.written) == expected
    assert sorted(after) == expected
    assert writer.pending == 0
    writer.close()


def test_a_failed_write_is_tried_again_until_it_succeeds():
    # Given a database that refuses the first three writes
    ledger, after = Ledger(failures=3), []
    writer = WriteBehind(ledger, on_written=after.extend, min_backoff_s=0.001)

    # When an item is put
    writer.put(7)

    # Then it is written once, on the fourth try, and the flush waited for that
    assert writer.flush(5)
    assert ledger.calls == 4
    assert ledger.written == [7] and after == [7]
    writer.close()


def test_close_writes_what_is_pending_and_a_later_put_starts_again():
    # Given items put while the database is briefly away
    ledger = Ledger(failures=2)
    exits = []
    writer = WriteBehind(ledger, on_exit=lambda: exits.append(threading.current_thread().name), min_backoff_s=0.01)
    for item in range(10):
        writer.put(item)

    # When the worker shuts down
    lost = writer.close(timeout_s=5)

    # Then everything was written, and the thread stopped (releasing its connection)
    assert lost == 0
    assert sorted(ledger.written) == list(range(10))
    assert exits == ["write-behind"]
    # And a later put is written by a new thread
    writer.put(10)
    assert writer.flush(5) and ledger.written[-1] == 10
    writer.close()


def test_close_gives_up_after_its_timeout_and_counts_what_it_could_not_write():
    # Given a database that stays away
    ledger = Ledger(failures=10**6)
    writer = WriteBehind(ledger, min_backoff_s=0.01, max_backoff_s=0.02)
    for item in range(3):
        writer.put(item)

    # When the worker shuts down, giving the writer 0.2 s
    lost = writer.close(timeout_s=0.2)

    # Then it says that three items were not written (their rows are reconciled later)
    assert lost == 3
    assert ledger.written == [] and ledger.calls > 1
    assert writer.pending == 0


def test_a_batch_with_an_item_the_database_refuses_is_split_and_only_that_item_given_up():
    # Given a database that refuses any batch holding item 13 (an integrity error)
    written, after = [], []

    def write(items):
        if 13 in items:
            raise ValueError("duplicate key")
        written.extend(items)

    writer = WriteBehind(write, on_written=after.extend, refused=lambda exc: isinstance(exc, ValueError), max_batch=32)

    # When twenty items are put
    for item in range(20):
        writer.put(item)
    assert writer.flush(5)

    # Then every other item was written (and announced), and the queue is not blocked
    expected = [item for item in range(20) if item != 13]
    assert sorted(written) == expected and sorted(after) == expected
    writer.put(20)
    assert writer.flush(5) and written[-1] == 20
    writer.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_thread_that_dies_leaves_its_batch_to_the_next_one():
    # Given a writer whose thread dies on its first write
    ledger = Ledger()
    deaths = []

    def write(items):
        if not deaths:
            deaths.append(items)
            raise ThreadKiller()
        ledger(items)

    writer = WriteBehind(write)
    writer.put(1)
    wait_for(lambda: deaths and not writer._thread.is_alive())

    # When another item is put
    writer.put(2)

    # Then a new thread writes both, the first one included
    assert writer.flush(5)
    assert sorted(ledger.written) == [1, 2]
    writer.close()


def test_close_returns_when_a_write_hangs_and_the_writer_finishes_later():
    # Given a write that hangs (a dead connection without a timeout), with two more items queued
    release = threading.Event()
    ledger = Ledger()

    def write(items):
        release.wait(5)
        ledger(items)

    writer = WriteBehind(write)
    writer.put(1)
    wait_for(lambda: writer._in_hand == [1])
    writer.put(2)
    writer.put(3)

    # When the worker shuts down, giving the writer 0.1 s
    unwritten = writer.close(timeout_s=0.1)

    # Then close did not wait for it, and says three are not written; once the write
    # returns, the writer finishes the job
    assert unwritten == 3
    release.set()
    assert writer.flush(5)
    assert sorted(ledger.written) == [1, 2, 3]
