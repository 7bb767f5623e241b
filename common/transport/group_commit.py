"""Group commit for the ingest: the worker thread behind :class:`common.transport.trajectories.IngestServer`.

In: validated messages handed over by the server's socket thread. Out: one call of the
store's commit function per batch, from this thread, and ``(batch, outcomes)`` queued for
the socket thread, which it wakes. Not a process of its own; the server is launched by
``pushcut store`` (learner/store_process.py).
"""
from __future__ import annotations

import collections
import threading
from typing import Callable, Sequence, Union

from common.wire.trajectory import Trajectory, WireError

# What a commit function returns per item: an ACK_OUTCOMES string, or the rejection.
Outcome = Union[str, WireError]
CommitFn = Callable[[Sequence[tuple[Trajectory, memoryview]]], list[Outcome]]


class GroupCommitter:
    """The commit worker thread: whenever it is free it takes everything validated since
    its last commit as one batch (group commit), commits it and queues ``(batch, outcomes
    or exception)`` in :attr:`done` for the socket thread, which it wakes with ``wake()``.

    It picks the next batch itself, straight after a commit, so that the durable commits
    follow each other without waiting for the (busy, GIL-sharing) socket thread."""

    def __init__(self, commit: CommitFn, wake: Callable[[], None], max_batch: int,
                 max_batch_bytes: int):
        self._commit, self._wake = commit, wake
        self.max_batch, self.max_batch_bytes = max_batch, max_batch_bytes
        self._cond = threading.Condition()
        self._waiting: list[tuple] = []          # (identity, tid, trajectory, payload)
        self._waiting_bytes = 0
        self._closing = False
        self.done: collections.deque[tuple[list, Union[list, Exception]]] = collections.deque()
        self._thread = threading.Thread(target=self._loop, name="ingest-commit", daemon=True)
        self._thread.start()

    def room(self) -> tuple[int, int]:
        """(messages, bytes) the waiting batch may still take."""
        with self._cond:
            return (self.max_batch - len(self._waiting),
                    self.max_batch_bytes - self._waiting_bytes)

    def add(self, items: list[tuple]) -> None:
        if items:
            with self._cond:
                self._waiting.extend(items)
                self._waiting_bytes += sum(item[3].nbytes for item in items)
                self._cond.notify()

    def close(self) -> None:
        """Commit what is waiting, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if not self._waiting:
                    return
                batch, self._waiting, self._waiting_bytes = self._waiting, [], 0
            try:
                result: Union[list, Exception] = self._commit([(t, p) for _, _, t, p in batch])
            except Exception as exc:   # reported by the socket thread; nothing is acked
                result = exc
            self.done.append((batch, result))
            self._wake()
