"""Many worker threads' statements run as one.

A worker process runs one message per thread, and on the send path each message costs a
database round trip (and a commit) to claim its row and another to record the result.
``Combiner`` is group commit: when several threads reach the same step at about the same
time, one of them runs all their requests in one statement while the others wait for
their answers, so the round trips and commits per message fall as the load rises. Nothing
is delayed to wait for company: a thread that finds nobody running a batch runs one at
once, alone if need be, and each caller returns only after its own request is done.
``WriteBehind`` is for writes a caller need not wait for at all (see its docstring).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatchInterrupted(RuntimeError):
    """The thread running a batch was interrupted; whether its statement took effect is unknown."""


class _Request(Generic[T, R]):
    __slots__ = ("item", "result", "error", "done", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Event()


class Combiner(Generic[T, R]):
    """Runs ``run(items) -> results`` (one result per item, in order) for batches of
    concurrent ``submit`` calls, on the thread of one of the callers.

    If ``run`` raises an error, every caller of that batch gets it; if the thread running it
    is interrupted (not an ``Exception``), that thread gets the interrupt and the other
    callers ``BatchInterrupted``. At most
    ``max_batch`` items go in one batch; the rest form the next, led by one of their own
    threads (a leader never serves more than its own batch). A waiting thread looks again
    every ``poll_s`` whether it should lead, so a thread that dies while waiting (an
    asynchronous time limit) cannot leave the others stuck.
    """

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_batch: int = 64, poll_s: float = 0.05) -> None:
        self.run = run
        self.max_batch = max_batch
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._waiting: deque[_Request[T, R]] = deque()
        self._running = False
        self._leader: int | None = None

    @property
    def waiting(self) -> int:
        """Requests not yet taken into a batch."""
        return len(self._waiting)

    def submit(self, item: T) -> R:
        request: _Request[T, R] = _Request(item)
        with self._lock:
            self._waiting.append(request)
        try:
            while True:
                with self._lock:
                    if request.done:
                        break
                    lead = not self._running
                    if lead:
                        self._running, self._leader = True, threading.get_ident()
                if lead:
                    self._lead()  # its batch holds this request unless more than max_batch were ahead
                    continue
                request.wake.wait(self.poll_s)
                request.wake.clear()
        except BaseException:
            # Interrupted (an asynchronous time limit): a request not yet taken is withdrawn,
            # and a lead this thread took but never ran is given up.
            with self._lock:
                if not request.done and request in self._waiting:
                    self._waiting.remove(request)
                if self._running and self._leader == threading.get_ident():
                    self._running, self._leader = False, None
            raise
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _lead(self) -> None:
        batch: list[_Request[T, R]] = []
        answered = False
        try:
            with self._lock:
                batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            try:
                results = self.run([request.item for request in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
                for request, result in zip(batch, results):
                    request.result = result
            except Exception as exc:
                for request in batch:
                    request.error = exc
            answered = True
        finally:
            if not answered:
                # An interrupt meant for this thread (an asynchronous time limit, an exit), not
                # for the batch: this thread gets it, the others learn their batch was cut short.
                for request in batch:
                    request.error = BatchInterrupted("the thread running this batch was interrupted")
            with self._lock:
                for request in batch:
                    request.done = True
                self._running, self._leader = False, None
                successor = self._waiting[0] if self._waiting else None
            for request in batch:
                request.wake.set()
            if successor is not None:
                successor.wake.set()


class WriteBehind(Generic[T]):
    """Runs ``write(items)`` on a thread of its own for items that many threads ``put``,
    so that a caller goes on without waiting for the commit.

    For writes whose loss a crash can repair by other means: the send path's "sent" records,
    whose rows stay ``sending`` until written, and a ``sending`` row left behind is looked
    up at Twilio before anything is sent again. A failed write is tried again, with backoff,
    until it succeeds or ``close`` gives up, except when ``refused(exc)`` says the items
    themselves are at fault (an integrity error): then the batch is split, so that only an
    item refused on its own is given up. ``on_written(items)`` runs after each write,
    ``on_exit()`` when the thread stops (to release its connection). The thread starts
    with the first ``put`` of each process (workers fork), and again if it died.
    """

    def __init__(
        self,
        write: Callable[[list[T]], object],
        *,
        on_written: Callable[[list[T]], object] | None = None,
        on_exit: Callable[[], object] | None = None,
        refused: Callable[[Exception], bool] = lambda exc: False,
        max_batch: int = 256,
        min_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        name: str = "write-behind",
    ) -> None:
        self.write = write
        self.on_written = on_written
        self.on_exit = on_exit
        self.refused = refused
        self.max_batch = max_batch
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.name = name
        self._cond = threading.Condition()
        self._items: deque[T] = deque()
        self._in_hand: list[T] = []
        self._put = 0
        self._done = 0
        self._closing = False
        self._give_up_at = float("inf")
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._given_up = 0

    @property
    def pending(self) -> int:
        """Items put and not yet written (or given up)."""
        with self._cond:
            return self._put - self._done

    def put(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._put += 1
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._closing, self._give_up_at = False, float("inf")
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every item put before this call is written; False on timeout."""
        with self._cond:
            target = self._put
            return self._cond.wait_for(lambda: self._done >= target, timeout_s)

    def close(self, timeout_s: float = 30.0) -> int:
        """Write what is pending, trying for at most ``timeout_s``, and stop the thread; a
        later ``put`` starts another. Returns how many items were not written by then."""
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout_s
            self._cond.notify_all()
            thread = self._thread if self._pid == os.getpid() else None
        if thread is not None:
            thread.join(timeout_s + 1)
        with self._cond:
            unwritten, self._given_up = self._put - self._done + self._given_up, 0
            if thread is not None and thread.is_alive():
                # Stuck in a write (a dead connection without a timeout): it goes on, and
                # writes what is left if the write ever returns.
                logger.error("%s: %d items not written after %.0f s; the writer is stuck", self.name, unwritten, timeout_s)
                return unwritten
            self._items.clear()
            self._done = self._put
            self._closing, self._give_up_at = False, float("inf")
            self._thread = None
            self._cond.notify_all()
        if unwritten:
            logger.error("%s: %d items were not written; their rows are reconciled later", self.name, unwritten)
        return unwritten

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._cond:
                # A thread that dies (not by a failed write: those are caught) leaves its
                # batch to the next one.
                self._items.extendleft(reversed(self._in_hand))
                self._in_hand = []
            if self.on_exit is not None:
                self.on_exit()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._closing)
                if not self._items:
                    return
                batch = self._in_hand = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
            written = self._write(batch)
            if written and self.on_written is not None:
                try:
                    self.on_written(written)
                except Exception:
                    logger.exception("%s: after-write step failed for %d items", self.name, len(written))
            with self._cond:
                self._in_hand = []
                self._done += len(batch)
                self._cond.notify_all()

    def _write(self, batch: list[T]) -> list[T]:
        """Write ``batch``; returns the items written (all, unless given up)."""
        backoff_s = self.min_backoff_s
        while True:
            try:
                self.write(batch)
                return batch
            except Exception as exc:
                if self.refused(exc):
                    if len(batch) == 1:
                        logger.error("%s: an item was refused (%s); its row is reconciled later", self.name, type(exc).__name__)
                        return []
                    half = len(batch) // 2
                    return self._write(batch[:half]) + self._write(batch[half:])
                if time.monotonic() + backoff_s > self._give_up_at:
                    logger.error("%s: gave up writing %d items at shutdown: %s", self.name, len(batch), type(exc).__name__)
                    with self._cond:
                        self._given_up += len(batch)
                    return []
                logger.warning("%s: writing %d items failed (%s); trying again in %.2f s",
                               self.name, len(batch), type(exc).__name__, backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self.max_backoff_s)
