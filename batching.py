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
    __slots__ = ("item", "result", "error", "done", "lead")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.lead = False


class Combiner(Generic[T, R]):
    """Runs ``run(items) -> results`` (one result per item, in order) for batches of
    concurrent ``submit`` calls, on the thread of one of the callers.

    If ``run`` raises, every caller of that batch gets the exception. At most
    ``max_batch`` items go in one batch; the rest form the next, led by one of their
    own threads (the leader never serves more than its own batch).
    """

    def __init__(self, run: Callable[[list[T]], list[R]], *, max_batch: int = 64) -> None:
        self.run = run
        self.max_batch = max_batch
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
            lead = not self._running
            if lead:
                self._running = True
        if not lead:
            request.done.wait()
            if not request.lead:
                if request.error is not None:
                    raise request.error
                return request.result  # type: ignore[return-value]
        self._lead()
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
            if self._waiting:
                successor = self._waiting[0]
                successor.lead = True
            else:
                successor = None
                self._running = False
        for request in batch:
            request.done.set()
        if successor is not None:
            successor.done.set()
