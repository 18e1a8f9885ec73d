"""One contention worker: N allocate/release cycles through the core API; prints the
allocate latencies (seconds) as a JSON list. ``--fetch``: with the pool's defaults
(fetching on); otherwise ``fetch=False``."""

import json
import sys
import time

from necropool.manager.facade import PoolManager


def main(pool: str, cycles: int, fetch: bool) -> None:
    manager = PoolManager()
    latencies = []
    for _ in range(cycles):
        start = time.perf_counter()
        slot = manager.allocate_slot(pool, wait=60, fetch=None if fetch else False)
        latencies.append(time.perf_counter() - start)
        manager.release_slot(slot["slot_id"], slot["lease_id"], fetch=None if fetch else False)
    print(json.dumps(latencies))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), "--fetch" in sys.argv[3:])
