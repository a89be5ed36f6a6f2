"""Database work on a thread of its own, so that a caller's Python work (an import
cleaning its next batch) goes on while the database works on the last one: the driver
lets go of the interpreter while it waits for the server, so the two overlap.

The thread has its own connection, opened when the block starts and closed when it ends,
and runs what it is given one call at a time, in order. The caller waits for a call's
result before it gives the next one (``submit`` then ``Future.result``), so a failure is
raised before anything after it is written.

A caller already inside a transaction keeps the work in it: the calls run on its own
thread, one after the other, as they would without this class. Another connection would
not see the caller's uncommitted rows, would not be undone with it, and on SQLite would
wait for its write lock until "database is locked".
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

from connections import database

T = TypeVar("T")


class DatabaseThread:
    """Use as a context manager.

    Parameters:
      name: the thread's name (seen in a stack dump).
    """

    def __init__(self, *, name: str = "database-thread") -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> "DatabaseThread":
        self._opened = False
        if database.in_transaction():  # the caller's own: the calls run here, in it
            return self
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._opened = self.call(database.connect, reuse_if_open=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is None:
            return
        try:
            if self._opened:
                self.call(database.close)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> "Future[T]":
        """Run ``fn`` on the thread; its Future gives the result, or raises what it raised."""
        if self._executor is not None:
            return self._executor.submit(fn, *args, **kwargs)
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # raised by ``result``, as from the thread
            future.set_exception(exc)
        return future

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn`` on the thread and wait for it."""
        return self.submit(fn, *args, **kwargs).result()


__all__ = ["DatabaseThread"]
