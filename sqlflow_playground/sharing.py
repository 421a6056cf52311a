"""Jobs that run inside one replica (``process``, ``sql``), answered by every replica.

The replica running such a job *ships* its output file to the store (``job_output``) as
it grows, and records ``output_size`` together with the job's end, once all of it is
there: a row that says the output is complete means every byte of it is in the store.
Another replica answers a fetch by *mirroring* the shipped bytes into a file of its own
(the same name, in its own directory for the job) and reading that with the plugin's own
reader, so pages and cursors are byte for byte those of the running replica.

Cancels from another replica are the store's verdict (a conditional update), which the
running replica sees on its next shipping tick and acts on. Each replica renews a lease;
the jobs of a replica whose lease ran out are ended FAILED with a message naming it.
These functions are blocking; the job service calls them through its executor.
"""
import os
import threading
from typing import Dict, List, Tuple

from .store import Store

SHIP_INTERVAL_S = 0.25  # how often a replica ships the new output of the jobs it runs
SHIP_CHUNK_BYTES = 256 << 10  # one row of job_output at most
SHIP_TICK_BYTES = 4 << 20  # per job and tick: a job printing faster catches up next tick
SHIP_TICK_TOTAL_BYTES = 16 << 20  # all jobs in one tick, in one transaction (memory bound)
MIRROR_STEP_BYTES = 1 << 20  # a mirror catches up in steps of this size (memory bound)
RENEW_INTERVAL_S = 5.0


def new_output(path: str, shipped: int, limit: int) -> List[Tuple[int, bytes]]:
    """(offset, bytes) chunks of ``path`` past ``shipped``, ``limit`` bytes at most."""
    chunks: List[Tuple[int, bytes]] = []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return chunks
    with fh:
        fh.seek(shipped)
        while limit > 0:
            data = fh.read(min(SHIP_CHUNK_BYTES, limit))
            if not data:
                break
            chunks.append((shipped, data))
            shipped += len(data)
            limit -= len(data)
    return chunks


def ship_all_output(store: Store, token: str, path: str, shipped: int) -> int:
    """Send every byte of ``path`` past ``shipped`` to the store, a bounded step per
    transaction; returns the size shipped in all."""
    while True:
        chunks = new_output(path, shipped, SHIP_TICK_BYTES)
        if not chunks:
            return shipped
        store.append_output([(token, offset, data) for offset, data in chunks])
        shipped = chunks[-1][0] + len(chunks[-1][1])


_mirror_locks: Dict[str, threading.Lock] = {}
_mirror_locks_guard = threading.Lock()


def _lock_for(token: str) -> threading.Lock:
    with _mirror_locks_guard:
        return _mirror_locks.setdefault(token, threading.Lock())


def sync_mirror(store: Store, token: str, path: str, shipped: int, want: int) -> int:
    """Bring the mirror file ``path`` up to byte ``shipped`` of the job's output, or at
    least to ``want`` (a reader's cursor plus a page) when it is further behind; returns
    the mirror's size. Concurrent fetches of one job on this replica take turns."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with _lock_for(token):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as fh:
            size = fh.seek(0, os.SEEK_END)
            target = min(shipped, max(want, size))
            while size < target:
                data = store.read_output(token, size, min(MIRROR_STEP_BYTES, target - size))
                if not data:
                    break
                fh.write(data)
                size += len(data)
        return size


def forget_mirror(token: str) -> None:
    with _mirror_locks_guard:
        _mirror_locks.pop(token, None)
