"""Group commit for worker threads: many threads' statements run as one.

A worker process runs one message per thread, and on the send path each message costs a
database round trip (and a commit) to claim its row and another to record the result.
When several threads reach the same step at about the same time, ``Combiner`` lets one of
them run all their requests in one statement while the others wait for their answers, so
the round trips and commits per message fall as the load rises. Nothing is delayed to wait
for company: a thread that finds nobody running a batch runs one at once, alone if need
be. Each thread still returns only after its own row is committed.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


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

    If ``run`` raises, every caller of that batch gets the exception. At most
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

    @property
    def waiting(self) -> int:
        """Requests not yet taken into a batch."""
        return len(self._waiting)

    def submit(self, item: T) -> R:
        request: _Request[T, R] = _Request(item)
        with self._lock:
            self._waiting.append(request)
        while True:
            with self._lock:
                if request.done:
                    break
                lead = not self._running
                if lead:
                    self._running = True
            if lead:
                self._lead()  # its batch holds this request unless more than max_batch were ahead
                continue
            request.wake.wait(self.poll_s)
            request.wake.clear()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._lock:
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        try:
            results = self.run([request.item for request in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
            for request, result in zip(batch, results):
                request.result = result
        except BaseException as exc:
            for request in batch:
                request.error = exc
        with self._lock:
            for request in batch:
                request.done = True
            self._running = False
            successor = self._waiting[0] if self._waiting else None
        for request in batch:
            request.wake.set()
        if successor is not None:
            successor.wake.set()
