"""A one-line progress bar with ETA on a terminal; silent when output is not a TTY."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int = 0, stream=sys.stderr, min_interval: float = 0.5):
        self.total, self.start, self.stream = total, start, stream
        self.enabled = stream.isatty()
        self.t0 = self.last = time.perf_counter()
        self.min_interval = min_interval

    def update(self, step: int, note: str = "") -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < self.min_interval and step < self.total):
            return
        self.last = now
        done = step - self.start
        eta = (now - self.t0) / done * (self.total - step) if done else 0.0
        width = 30
        filled = int(width * step / self.total)
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {step}/{self.total} ETA {_clock(eta)} {note}\033[K")
        if step >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def note(line: str) -> None:
    """A line for the person watching, on stderr: stdout stays for results."""
    print(line, file=sys.stderr, flush=True)
