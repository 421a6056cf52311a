"""Job output kept on disk, read back in pages from a byte-offset cursor.

A cursor is the byte offset just past the last line returned. Only whole lines are
returned (the last, unterminated line only once the writer is done), so a reader never
sees a line twice or half of one, and memory per read is bounded by ``max_bytes``.
"""
import json
import os
from typing import Any, Dict, List, Tuple

from ..errors import BadRequest


def parse_cursor(cursor: str) -> int:
    if cursor in ("", None):
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 18:
        raise BadRequest(f"invalid cursor {cursor!r}: pass the 'next' value of a previous fetch")
    return int(cursor)


def read_lines(path: str, cursor: str, max_bytes: int, complete: bool,
               split_long: bool = True) -> Tuple[List[bytes], str]:
    """Whole lines from ``cursor`` on, at most ``max_bytes`` of them, and the next cursor.

    ``complete`` says the writer has finished, so a final line without a newline counts.
    A single line longer than ``max_bytes`` is returned in ``max_bytes`` pieces, or, with
    ``split_long=False``, whole.
    """
    offset = parse_cursor(cursor)
    if max_bytes <= 0:  # status only
        return [], str(offset)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        if offset:
            raise BadRequest(f"invalid cursor {cursor!r}: beyond the end of the output") from None
        return [], str(offset)
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if offset > size:
            raise BadRequest(f"invalid cursor {cursor!r}: beyond the end of the output")
        fh.seek(offset)
        chunk = fh.read(min(max_bytes, size - offset))
        while not split_long and b"\n" not in chunk and offset + len(chunk) < size:
            chunk += fh.read(max_bytes)  # one line longer than a page: read it whole
    end = chunk.rfind(b"\n") + 1
    if end == 0 and chunk:
        # No newline in this chunk: a line longer than the page, or the final line.
        if (split_long and len(chunk) >= max_bytes) or complete:
            end = len(chunk)
    elif complete and offset + len(chunk) == size:
        end = len(chunk)
    body = chunk[:end]
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines, str(offset + end)


class ResponseLog:
    """An append-only JSON-lines file of SQLFlow-style responses."""

    def __init__(self, path: str):
        self.path = path

    def writer(self) -> "ResponseWriter":
        return ResponseWriter(self.path)

    def read(self, cursor: str, max_bytes: int) -> Tuple[List[Dict[str, Any]], str]:
        """Responses after ``cursor``, about ``max_bytes`` of them, and the next cursor.

        A single response larger than ``max_bytes`` is still returned whole.
        """
        lines, next_cursor = read_lines(self.path, cursor, max_bytes, complete=False,
                                        split_long=False)
        return [json.loads(line) for line in lines], next_cursor


class OutputLimitExceeded(Exception):
    """Writing a response would take the job's output past its cap on disk
    (``TaskContext.max_output_bytes``). Nothing of that response was written."""

    def __init__(self, limit: int, written: int, size: int):
        super().__init__(f"output cap reached: {written} bytes written, the next response "
                         f"({size} bytes) would pass the cap of {limit} bytes")
        self.limit, self.written, self.size = limit, written, size


def open_private(path: str, mode: str = "ab", **kw: Any):
    """``open(path, mode)`` for writing, creating the file 0600 (job output is the
    job's owner's business only, whatever the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_APPEND if mode.startswith("a") else os.O_TRUNC
    return open(os.open(path, flags, 0o600), mode, **kw)


class ResponseWriter:
    """Writes responses one line each; a line is visible to readers once flushed.

    With ``limit`` > 0 the file never grows past ``limit`` bytes: a ``write`` that would
    take it further raises OutputLimitExceeded and writes nothing (the lines before it
    stay whole, so the output so far remains readable).
    """

    def __init__(self, path: str, limit: int = 0):
        self._fh = open_private(path)
        self.limit = limit
        self.written = self._fh.tell()  # appending to what is already there

    def write(self, response: Dict[str, Any]) -> None:
        line = json.dumps(response, separators=(",", ":")).encode() + b"\n"
        if self.limit > 0 and self.written + len(line) > self.limit:
            raise OutputLimitExceeded(self.limit, self.written, len(line))
        self._fh.write(line)
        self.written += len(line)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "ResponseWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
