"""Container logs as the kubelet keeps and serves them.

Mirrors the CRI log files behind ``GET …/pods/{name}/log``: stdout and stderr interleaved,
one timestamp per line; ``timestamps=true`` prefixes each line with the kubelet's fixed
RFC3339Nano form (``2024-05-01T12:00:00.123456789Z``); ``sinceTime`` keeps the lines at or
after a time that the API server has already cut to whole seconds (it re-formats the
parameter with Go's ``time.RFC3339`` before asking the kubelet); ``sinceSeconds``,
``tailLines`` and ``limitBytes`` as documented; ``follow`` streams until the container ends.
A node's clock may be coarse: with ``resolution_ns`` > 1 the timestamps are cut to it, so
consecutive lines may share one (as stdout and stderr lines written together do).
"""
import asyncio
import datetime
import re
import time
from typing import List, Optional, Tuple

from .errors import bad_request

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def format_timestamp(t_ns: int) -> str:
    seconds, nanos = divmod(t_ns, 1_000_000_000)
    base = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return f"{base.strftime('%Y-%m-%dT%H:%M:%S')}.{nanos:09d}Z"


def parse_since_time(value: str) -> int:
    """An RFC3339 time as nanoseconds, truncated to the second like the API server does."""
    m = _RFC3339.match(value.strip())
    if not m:
        raise bad_request(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse')
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    at = datetime.datetime.fromisoformat(m.group(1) + zone)
    return int(at.timestamp()) * 1_000_000_000


class ContainerLog:
    """The lines one container wrote, each with the time it arrived, in order."""

    def __init__(self, resolution_ns: int = 1) -> None:
        self.lines: List[Tuple[int, bytes]] = []
        self.closed = False
        self.resolution_ns = resolution_ns
        self._changed = asyncio.Event()

    def append(self, line: bytes) -> None:
        t = time.time_ns()
        if self.resolution_ns > 1:  # a coarse clock: equal timestamps, never going back
            t = max(t - t % self.resolution_ns, self.lines[-1][0] if self.lines else 0)
        elif self.lines and t <= self.lines[-1][0]:
            t = self.lines[-1][0] + 1
        self.lines.append((t, line))
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float, interrupt: Optional[asyncio.Event] = None) -> None:
        """Until the log changes, ``interrupt`` is set, or ``timeout`` passes."""
        waits = [asyncio.ensure_future(self._changed.wait())]
        if interrupt is not None:
            waits.append(asyncio.ensure_future(interrupt.wait()))
        _, pending = await asyncio.wait(waits, timeout=timeout,
                                        return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    def select(self, since_ns: Optional[int] = None, tail: Optional[int] = None,
               start: int = 0) -> List[Tuple[int, bytes]]:
        lines = self.lines[start:]
        if since_ns is not None:
            lines = [(t, b) for t, b in lines if t >= since_ns]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        return lines


def render(lines: List[Tuple[int, bytes]], timestamps: bool) -> bytes:
    if not timestamps:
        return b"".join(b for _, b in lines)
    return b"".join(format_timestamp(t).encode() + b" " + b for t, b in lines)


async def pump(stream: asyncio.StreamReader, log: ContainerLog) -> None:
    """Copy a process's output into ``log`` line by line until end of file."""
    pending = b""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            log.append(line + b"\n")
    if pending:
        log.append(pending)
