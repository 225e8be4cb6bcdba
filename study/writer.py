"""MLflow writes off Tune's event loop: one thread runs them, in the order they were handed in.

Tune calls its callbacks from its own loop, and a write that waits on a store (SQLite's lock, a
tracking server over the network, an artifact upload, a generator's torch.export) holds the
scheduling of every trial for as long. The callback hands each write to this thread and
returns. In submission order, a trial's run is made before its results are logged and its
results before its end; and one thread stays the store's only writer.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 of a list of durations, in milliseconds (0 for none)."""
    if not seconds:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99)}


class Writer:
    """A thread that runs the jobs handed to it one at a time, first in first out. A job that
    raises is passed to `on_error` with its label, and the next job runs. Each job gets a
    ticket (1, 2, ...): `wait_for(ticket)` returns once it and every job before it has run."""

    def __init__(self, on_error: Callable[[str, Exception], None]):
        self._jobs: queue.Queue = queue.Queue()
        self._on_error = on_error
        self._submitted = self._done = 0
        self._progress = threading.Condition()
        self.latency_s: list[float] = []  # per job: from its submission to its end
        self.busy_s: list[float] = []  # per job: its own run, without the wait in the queue
        self._thread = threading.Thread(target=self._work, name="mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, label: str, job: Callable[..., Any], *args: Any) -> int:
        with self._progress:
            self._submitted += 1
            self._jobs.put((time.perf_counter(), label, job, args))
            return self._submitted

    def wait_for(self, ticket: int) -> None:
        with self._progress:
            self._progress.wait_for(lambda: self._done >= ticket)

    def flush(self) -> None:
        """Wait until every job handed in so far has run."""
        self.wait_for(self._submitted)

    def close(self) -> None:
        self.flush()
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            submitted, label, job, args = item
            began = time.perf_counter()
            try:
                job(*args)
            except Exception as err:
                with contextlib.suppress(Exception):  # reporting must not end the thread
                    self._on_error(label, err)
            finally:
                ended = time.perf_counter()
                self.latency_s.append(ended - submitted)
                self.busy_s.append(ended - began)
                with self._progress:
                    self._done += 1
                    self._progress.notify_all()
