"""Loading MNIST the first time (decode + resize + cache write) and the second (from the cache).

    python benchmarks/data_loading.py

Prints both times and their ratio, for each training size. Target: second load under 2 s.
"""

from __future__ import annotations

import os
import tempfile
import time


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GANSTUDY_CACHE"] = cache  # a cold cache, whatever this machine has seen
        from gan.data import load_images

        print(f"{'size':>4} {'first load s':>13} {'second load s':>14} {'ratio':>6}")
        for size in (28, 32, 64):
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                data = load_images("mnist", size, 1)
                times.append(time.perf_counter() - t0)
            assert len(data) == 60000
            print(f"{size:4} {times[0]:13.2f} {times[1]:14.2f} {times[0] / times[1]:6.1f}")


if __name__ == "__main__":
    main()
