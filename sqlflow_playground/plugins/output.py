"""Job output kept on disk, read back in pages from a byte-offset cursor.

A cursor is the byte offset just past the last line returned. Only whole lines are
returned (the last, unterminated line only once the writer is done), so a reader never
sees a line twice or half of one, and memory per read is bounded by ``max_bytes``.

A page is bounded as the fetch sends it: the JSON of its responses takes at most
``max_bytes`` (``fetch_page_bytes``), whatever is on disk. A text line too long for one
page comes in pieces (``read_messages``); a JSON response too large for one page is never
returned whole, nor read whole: it is replaced by a message saying it was skipped
(``ResponseLog.read``).
"""
import collections.abc
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import BadRequest

SCAN_BYTES = 64 << 10  # a line longer than a page is scanned for its end in these steps
MESSAGE_OVERHEAD = len('{"message":}') + 1  # around the JSON string, plus a comma
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')
# Bytes a text page may hold and still be sent as it is: newlines and printable ASCII but
# '"' and '\\'. ``page.translate(None, _CLEAN_TEXT)`` keeps the others: a C pass over the
# page, some 40 times faster than a regular expression's search for them.
_CLEAN_TEXT = bytes(b for b in range(256) if b == 10 or (0x20 <= b <= 0x7e and b not in b'"\\'))
CLEAN_COST = 2 + MESSAGE_OVERHEAD  # a line's cost in a page beyond its bytes, if clean
SLICE_BYTES = 64 << 10  # a clean page is read and encoded in slices of this size
FIT_STEPS = 64  # lines walked to find a page's end before bisecting: see _fit_clean


def parse_cursor(cursor: str) -> int:
    if cursor in ("", None):
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 18:
        raise BadRequest(f"invalid cursor {cursor!r}: pass the 'next' value of a previous fetch")
    return int(cursor)


def _open_at(path: str, offset: int, cursor: str):
    """(file positioned at ``offset``, its size), or (None, 0) when there is no file yet."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        if offset:
            raise BadRequest(f"invalid cursor {cursor!r}: beyond the end of the output") from None
        return None, 0
    size = os.fstat(fh.fileno()).st_size
    if offset > size:
        fh.close()
        raise BadRequest(f"invalid cursor {cursor!r}: beyond the end of the output")
    fh.seek(offset)
    return fh, size


def read_lines(path: str, cursor: str, max_bytes: int, complete: bool,
               split_long: bool = True) -> Tuple[List[bytes], str]:
    """Whole lines from ``cursor`` on, at most ``max_bytes`` of them, and the next cursor.

    ``complete`` says the writer has finished, so a final line without a newline counts.
    A single line longer than ``max_bytes`` is returned in ``max_bytes`` pieces.
    (``split_long`` is ignored: a line is never returned whole past ``max_bytes`` any
    more; kept so that callers written for it still run.)
    """
    offset = parse_cursor(cursor)
    chunk, end, _ = _read_whole_lines(path, offset, cursor, max_bytes, complete)
    body = chunk if end == len(chunk) else chunk[:end]
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines, str(offset + len(body))


def _read_whole_lines(path: str, offset: int, cursor: str, max_bytes: int,
                      complete: bool) -> Tuple[bytes, int, int]:
    """(the bytes read, the end of ``read_lines``'s lines in them (each with its newline
    but perhaps the last), the file's size (0 when there is none yet))."""
    if max_bytes <= 0:  # status only
        return b"", 0, 0
    fh, size = _open_at(path, offset, cursor)
    if fh is None:
        return b"", 0, 0
    with fh:
        chunk = fh.read(min(max_bytes, size - offset))
    end = chunk.rfind(b"\n") + 1
    if end == 0 and chunk:
        # No newline in this chunk: a line longer than the page, or the final line.
        if len(chunk) >= max_bytes or complete:
            end = len(chunk)
    elif complete and offset + len(chunk) == size:
        end = len(chunk)
    return chunk, end, size


def message_size(line: bytes) -> int:
    """Bytes that ``{"message": line}`` takes in a fetch's JSON (compact, ASCII-escaped)."""
    if not _NEEDS_ESCAPE.search(line):
        return len(line) + 2 + MESSAGE_OVERHEAD
    return len(json.dumps(line.decode("utf-8", "replace"))) + MESSAGE_OVERHEAD


def read_messages(path: str, cursor: str, max_bytes: int,
                  complete: bool) -> Tuple[List[Dict[str, str]], str, bool]:
    """``read_message_page`` with its responses as a plain list (json.dumps wants one)."""
    responses, next_cursor, more = read_message_page(path, cursor, max_bytes, complete)
    return list(responses), next_cursor, more


def read_message_page(path: str, cursor: str, max_bytes: int,
                      complete: bool) -> Tuple[Sequence[Dict[str, str]], str, bool]:
    """A text log's lines from ``cursor`` on as ``{"message": line}`` responses whose JSON
    takes at most ``max_bytes``; the next cursor; whether more bytes lie past it.

    JSON escaping can make a line up to six times larger (control characters, bytes that
    are not UTF-8), so the page ends where the encoded size would pass ``max_bytes``, and a
    line too large even alone is cut (at a character boundary) to fit.

    A page of printable ASCII lines (the usual log) comes as a ``MessageLines``, its JSON
    made from the bytes read a slice at a time in a few C passes (``_clean_page``; a fetch
    sends it as it is); any other, as a list of dicts made line by line.
    """
    offset = parse_cursor(cursor)
    if max_bytes > 0:
        fh, size = _open_at(path, offset, cursor)
        if fh is not None:
            with fh:
                page = _clean_page(fh.fileno(), offset, min(max_bytes, size - offset), size,
                                   max_bytes, complete)
            if page is not None:
                return page, str(offset + page.length), offset + page.length < size
    chunk, end, _ = _read_whole_lines(path, offset, cursor, max_bytes, complete)
    body = chunk if end == len(chunk) else chunk[:end]
    del chunk
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    taken: List[bytes] = []
    pos, used, end = offset, 0, offset + end
    for line in lines:
        cost = message_size(line)
        if used + cost > max_bytes:
            if taken:
                end = pos
                break
            piece = _cut_to_fit(line, max_bytes)  # alone larger than a page
            if len(piece) < len(line):
                taken.append(piece)
                end = pos + len(piece)
                break
            # (a page too small for even an empty message: take the line anyway)
        taken.append(line)
        used += cost
        pos = min(pos + len(line) + 1, end)  # + its newline (none after the last piece)
    try:
        more = end < os.path.getsize(path)
    except FileNotFoundError:
        more = False
    return ([{"message": line.decode("utf-8", "replace")} for line in taken],
            str(end), more)


def _clean_page(fd: int, offset: int, want: int, size: int, max_bytes: int,
                complete: bool) -> Optional["MessageLines"]:
    """The page ``read_message_page`` answers from ``offset``, if its lines are printable
    ASCII (no quote, no backslash: the usual log), as a MessageLines; else None (also
    when it holds no whole line, or a line longer than SLICE_BYTES: the careful path,
    line by line, answers those).

    The ``want`` bytes from ``offset`` (what the careful path reads at once) are read a
    slice of SLICE_BYTES at a time: one ``translate`` confirms that no byte of it needs
    escaping, one ``replace`` turns its lines into the JSON (appended to the page's), and
    how much longer that made it counts the newlines, so the cost of its whole lines
    (each costs its bytes plus CLEAN_COST, as ``message_size`` says). A line cut by the slice's end is read again
    with the next slice. So the page holds its JSON (at most ``max_bytes``) and a slice or
    two at a time, never the bytes read and their JSON both whole."""
    extra, grow = CLEAN_COST - 1, len(_MESSAGE_SEP) - 1
    out = bytearray(_PAGE_HEAD)
    used = lines = 0
    pos, stop = offset, offset + want
    tail = b""
    while pos < stop:
        data = os.pread(fd, min(SLICE_BYTES, stop - pos), pos)
        if not data or data.translate(None, _CLEAN_TEXT):
            return None
        last = data.rfind(b"\n")
        if last < 0:  # no newline: the final line, or one longer than a slice
            if pos + len(data) < stop:
                return None
            tail = data
            break
        json_ = data.replace(b"\n", _MESSAGE_SEP)
        whole, count = last + 1, (len(json_) - len(data)) // grow  # (quicker than count)
        cost = whole + count * extra
        if used + cost > max_bytes:  # the page ends in this slice
            whole = _fit_clean(data, whole, max_bytes - used)
            count = data.count(b"\n", 0, whole)
        if whole:
            with memoryview(json_) as view:
                out += view[:whole + count * grow]
            used, lines, pos = used + cost, lines + count, pos + whole
        del json_
        if whole < last + 1:  # full
            break
    if tail and complete and stop == size and used + len(tail) + 1 + extra <= max_bytes:
        out += tail  # the final line, without a newline, as the careful path takes it
        out += _MESSAGE_SEP
        lines, pos = lines + 1, pos + len(tail)
    if not lines:
        return None
    end = len(out) - len(_MESSAGE_SEP) + 2  # the last line's '"}' stays...
    out[end] = 0x5D  # ...and "]" ends the array, in place of the separator's rest
    del out[end + 1:]
    return MessageLines(out, lines, pos - offset)


def _fit_clean(chunk: bytes, end: int, max_bytes: int) -> int:
    """How many bytes of ``chunk[:end]`` (whole lines of printable ASCII, each with its
    newline but perhaps the last) make the longest run of its first lines whose messages
    fit in ``max_bytes``, as ``read_messages`` would take them one by one; 0 if not even
    the first line fits (then it is cut, the slow way). No copy of ``chunk`` is made."""
    extra = CLEAN_COST - 1  # a line costs its bytes with its newline, plus this

    def cost(length: int, lines: int) -> int:  # of chunk[:length], ``lines`` newlines in it
        if length and chunk[length - 1] != 10:  # the final line, without its newline
            return length + 1 + (lines + 1) * extra
        return length + lines * extra
    total = chunk.count(b"\n", 0, end)
    used = cost(end, total)
    if used <= max_bytes:
        return end
    # Lines cost their bytes plus a constant: start where that is about max_bytes...
    pos = chunk.rfind(b"\n", 0, end * max_bytes // used) + 1
    used = cost(pos, total - chunk.count(b"\n", pos, end))
    for _ in range(FIT_STEPS):  # ...and walk a line at a time to the page's end
        if used > max_bytes:
            if pos == 0:
                return 0
            before = chunk.rfind(b"\n", 0, pos - 1) + 1
            used -= pos - before + extra
            pos = before
            continue
        after = chunk.find(b"\n", pos, end) + 1 or end
        more = after - pos + extra + (chunk[after - 1] != 10)
        if used + more > max_bytes:
            return pos
        pos, used = after, used + more
    lo, hi = 0, end  # line lengths far from even: bisect (cost grows with length)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        stop = chunk.rfind(b"\n", 0, mid) + 1
        if cost(stop, chunk.count(b"\n", 0, stop)) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return chunk.rfind(b"\n", 0, lo) + 1


def _cut_to_fit(line: bytes, max_bytes: int) -> bytes:
    """The longest prefix of ``line`` (at least one character) whose message fits in
    ``max_bytes``, not ending inside a UTF-8 character."""
    lo, hi = 1, len(line)  # a binary search: a longer prefix never encodes shorter
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if message_size(line[:mid]) <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    n = lo
    while 1 < n < len(line) and line[n] & 0xC0 == 0x80:
        n -= 1
    while n < min(len(line), 4) and line[n] & 0xC0 == 0x80:
        n += 1  # a page too small for one character: take the whole character
    return line[:n]


def skipped(size: int, max_bytes: int) -> Dict[str, str]:
    """What a page says in place of a response too large for any page."""
    return {"message": f"response of {size} bytes skipped: larger than fetch_page_bytes "
                       f"({max_bytes} bytes)"}


class JsonLines(collections.abc.Sequence):
    """Responses as read from a JSON-lines file: kept as the bytes on disk, so that a fetch
    sends them as they are (``json``, one C call) instead of decoding and re-encoding a
    page in Python; decoded only when someone looks at an element.

    A read-only sequence that compares equal to the list of the same responses and adds
    to lists; ``list(...)`` of it is a plain list (``json.dumps`` wants one)."""

    __slots__ = ("_body", "_count", "_items")

    def __init__(self, body: bytes):
        self._body = body  # whole lines, each ending with a newline
        self._count = body.count(b"\n")
        self._items: Optional[List[Any]] = None

    @property
    def json(self) -> bytes:
        """The compact JSON array of these responses."""
        return b"[" + self._body[:-1].replace(b"\n", b",") + b"]"

    def _decoded(self) -> List[Any]:
        if self._items is None:
            self._items = [json.loads(line) for line in self._body.split(b"\n")[:-1]]
        return self._items

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        return self._decoded()[index]

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, (list, JsonLines)):
            return self._decoded() == list(other)
        return NotImplemented

    def __add__(self, other: Any) -> List[Any]:
        return self._decoded() + list(other)

    def __radd__(self, other: Any) -> List[Any]:  # a list + this
        return list(other) + self._decoded()

    def __repr__(self) -> str:
        return repr(self._decoded())


_MESSAGE_SEP = b'"},{"message":"'
_PAGE_HEAD = b'[{"message":"'


class MessageLines(JsonLines):
    """Text lines of printable ASCII (no quote, no backslash) as ``{"message": line}``
    responses, kept as their JSON (made by ``_clean_page``; a fetch sends it as it is);
    decoded only if someone looks at an element. ``length``: the bytes of the file they
    came from, newlines included."""

    __slots__ = ("length",)

    def __init__(self, json_: bytearray, count: int, length: int):
        self._body, self._count, self._items, self.length = json_, count, None, length

    @property
    def json(self) -> bytearray:
        """The compact JSON array (a bytearray)."""
        return self._body

    def _decoded(self) -> List[Any]:
        if self._items is None:
            self._items = json.loads(self._body)
        return self._items


class ResponseLog:
    """An append-only JSON-lines file of SQLFlow-style responses."""

    def __init__(self, path: str):
        self.path = path
        #: after ``read``: whether whole responses remain past the cursor it returned
        self.more = False

    def writer(self, limit: int = 0) -> "ResponseWriter":
        return ResponseWriter(self.path, limit)

    def read(self, cursor: str, max_bytes: int) -> Tuple[Sequence[Dict[str, Any]], str]:
        """Responses after ``cursor`` whose JSON takes at most ``max_bytes`` (a JsonLines),
        and the next cursor. Only whole lines (a line is whole once its newline is written).

        A response larger than ``max_bytes`` (the writers refuse them, but a file may
        predate that) is never loaded: its end is found in SCAN_BYTES steps, and it comes
        back as one ``skipped`` message, with the cursor past it.
        """
        self.more = False
        offset = parse_cursor(cursor)
        if max_bytes <= 0:
            return [], str(offset)
        fh, size = _open_at(self.path, offset, cursor)
        if fh is None:
            return [], str(offset)
        with fh:
            # One byte over: a line of exactly max_bytes and its newline fit in a page.
            chunk = fh.read(min(max_bytes + 1, size - offset))
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                if len(chunk) <= max_bytes:
                    return [], str(offset)  # a line still being written, or nothing
                line_end = _find_newline(fh, size)
                if line_end is None:
                    return [], str(offset)  # not whole yet
                self.more = line_end + 1 < size
                return [skipped(line_end - offset, max_bytes)], str(line_end + 1)
        # Bytes left past the last newline of a chunk that stopped short of the end may
        # hold whole lines; those of a chunk that reached the end hold none.
        self.more = offset + len(chunk) < size
        return JsonLines(chunk[:end]), str(offset + end)


def _find_newline(fh, size: int) -> Optional[int]:
    """The offset of the next newline from ``fh``'s position, reading at most SCAN_BYTES
    at a time; None if there is none before ``size``."""
    pos = fh.tell()
    while pos < size:
        block = fh.read(min(SCAN_BYTES, size - pos))
        if not block:
            return None
        i = block.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(block)
    return None


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


# allow_nan=False: every line must be JSON as it is, for fetches send it unchanged. One
# encoder for all (json.dumps with any non-default argument builds one per call).
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


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
        line = _LINE_ENCODER.encode(response).encode() + b"\n"
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


class ResponseLogOutput:
    """For a task type (a ``TaskPlugin``) whose whole output is a ``ResponseLog``,
    ``output_file`` in its job's directory, written by a ``ResponseWriter``: the
    ``read_output`` its ``get`` and every other replica read it with."""

    output_file = "responses.jsonl"

    def read_output(self, ctx, cursor: str, complete: bool):
        log = ResponseLog(os.path.join(ctx.workdir, self.output_file))
        responses, next_cursor = log.read(cursor, ctx.max_bytes)
        return responses, next_cursor, log.more
