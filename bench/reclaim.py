"""How soon deleted sessions give their disk back: 8 sessions x 100 random checkpoints of
200 KB, every session deleted, then 5 MB more written; what the daemon's `log/` directory
takes on disk, every half second for 6 s.

    python bench/reclaim.py --socket PATH --state-dir DIR

Run it against a daemon started with `--segment-bytes 4194304` on that state directory (the
figures in issue 19 and RELIABILITY.md come from a release build so started).
"""

from __future__ import annotations

import argparse
import os
import time

import sessiond


def disk(log_dir: str) -> int:
    total = 0
    for entry in os.scandir(log_dir):
        if entry.is_file():
            total += entry.stat().st_blocks * 512
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--state-dir", required=True)
    a = p.parse_args()
    log_dir = os.path.join(a.state_dir, "log")
    c = sessiond.Client(a.socket)
    for s in range(8):
        c.create(f"reclaim-{s}", keep=0, detached=True)
        for _ in range(100):
            c.checkpoint(f"reclaim-{s}", os.urandom(200_000))
    print(f"after the writes: {disk(log_dir):,} bytes")
    for s in range(8):
        c.delete(f"reclaim-{s}")
    deleted = time.monotonic()
    c.create("reclaim-after", keep=0, detached=True)
    for _ in range(25):
        c.checkpoint("reclaim-after", os.urandom(200_000))
    for _ in range(13):
        print(f"{time.monotonic() - deleted:4.1f} s after the deletes: {disk(log_dir):,} bytes")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
