"""SIGINT during a study: the first Ctrl+C stops the running Tune experiment cleanly, a second
stops at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupts:
    """SIGINT (Ctrl+C) during a study. The first asks the running Tune experiment to stop after
    saving its state (through Tune's own SIGUSR1 handler) and is remembered, so that the study
    stops there and not one phase later; a second one stops at once.

    Tune's own SIGINT handler is kept out: it stays installed after a run it did not stop,
    swallowing a later Ctrl+C, and a run it stops may still end with every trial finished (it
    lets running trials report for a few seconds), which would look like a finished phase."""

    def __init__(self) -> None:
        self.received = False

    def handle(self, signum: int, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        stop_tune = signal.getsignal(signal.SIGUSR1)
        if callable(stop_tune):
            stop_tune(signum, frame)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may handle signals; Tune then handles none either
            return
        before = signal.signal(signal.SIGINT, self.handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, before)

