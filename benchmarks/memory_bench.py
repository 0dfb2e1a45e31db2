"""What this machine charges for touching memory a process has not used yet: the floor under every figure
in docs/performance.md that allocates (inflating, parsing, the page cache of a download).

    python benchmarks/memory_bench.py [--mb 100] [--waits 0,1,2,4,8] [--repeat 2]

Each line allocates and fills `--mb` MB (NumPy, so the memory comes fresh from the kernel), frees it,
waits, and fills the same amount again. On bare metal both fills take about the same time. On a VM whose
free memory goes back to the host after a while (free page reporting, the virtio balloon), the second fill
pays a host fault per page once the wait is long enough.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PAGE = 4096


def fill_ms(mb: int) -> float:
    """Milliseconds to allocate and write `mb` MB, then free it."""
    started = time.perf_counter()
    block = np.ones(mb * 1_000_000 // 8)
    elapsed = time.perf_counter() - started
    del block
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--waits", default="0,1,2,4,8", help="seconds the memory stays free, comma-separated")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    pages = args.mb * 1_000_000 / PAGE
    print(f"first fill of {args.mb} MB in this process: {fill_ms(args.mb):.0f} ms")
    print(f"{'free for':>9} {'fill ms':>8} {'MB/s':>7} {'us/page':>8}")
    for wait in (float(w) for w in args.waits.split(",")):
        for _ in range(args.repeat):
            fill_ms(args.mb)  # the memory is now recently used...
            time.sleep(wait)  # ...and stays free this long
            ms = fill_ms(args.mb)
            print(f"{wait:>8.1f}s {ms:>8.1f} {args.mb / ms * 1000:>7.0f} {ms * 1000 / pages:>8.2f}")


if __name__ == "__main__":
    main()
