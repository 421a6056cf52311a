"""Reading a pod's log incrementally, with a cursor that neither repeats nor drops lines.

The API's ``sinceTime`` has one-second resolution, and the official client does not even
offer it, so the log is requested from the start of the cursor's second with
``timestamps=true``, and the lines the cursor has already covered are skipped: those
before its timestamp, and the first ``n`` that share it. So a line's place in the log is
(its timestamp, its rank among the lines sharing that timestamp), and a cursor is the place
of the last line returned: any replica, reading the log any way, agrees on it.

``read_page``/``LogReader`` read a page per fetch; ``k8s/logfollow.py`` follows a running
pod's log with one stream and answers fetches from memory, falling back to these.
"""
import collections
import threading
import time
from typing import Any, List, Optional, Tuple

from kubernetes.client.rest import ApiException

from ..errors import LogTooDense

Cursor = Tuple[str, int]  # (RFC3339Nano timestamp of the last line returned, lines sharing it)
MAX_READ_BYTES = 32 << 20  # the most one page read may hold: see read_page


def parse_cursor(cursor: str) -> Optional[Cursor]:
    """``"stamp|n"`` -> (stamp, n); "" -> None. ValueError if it is not one."""
    if not cursor:
        return None
    stamp, _, count = cursor.rpartition("|")
    if not stamp or not count.isdigit():
        raise ValueError(cursor)
    time_key(stamp)  # raises ValueError for a stamp that is not one
    return stamp, int(count)


def format_cursor(cursor: Optional[Cursor]) -> str:
    return f"{cursor[0]}|{cursor[1]}" if cursor else ""


def time_key(stamp: str) -> Tuple[str, int]:
    """Orderable form of an RFC3339(Nano) UTC timestamp, whatever its fraction length."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    if fraction and not fraction.isdigit():
        raise ValueError(stamp)
    return whole, int((fraction + "000000000")[:9])


def whole_second(stamp: str) -> str:
    """The ``sinceTime`` that asks for the lines of ``stamp``'s second on: the API server
    cuts it to the second anyway."""
    return stamp.split(".")[0].rstrip("Z") + "Z"


def _log_request(api_client, namespace: str, name: str, query: List[Tuple[str, str]],
                 timeout: Any, container: Optional[str] = None) -> Any:
    """GET pods/log (blocking) of ``container`` (None: the API server's choice, which is an
    error for a pod of several containers); the response, unread. ApiException if not 2xx."""
    if container:
        query = [("container", container)] + query
    method, url, headers, body, post = api_client.param_serialize(
        method="GET", resource_path="/api/v1/namespaces/{namespace}/pods/{name}/log",
        path_params={"namespace": namespace, "name": name}, query_params=query,
        header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, headers, body, post, _request_timeout=timeout)
    if not 200 <= response.status < 300:
        body = response.read()
        raise ApiException(status=response.status, reason=response.reason,
                           data=body.decode("utf-8", "replace") if isinstance(body, bytes)
                           else body)
    return response


def read_log(api_client, namespace: str, name: str, since: Optional[str],
             limit_bytes: int, container: Optional[str] = None) -> str:
    """GET pods/log with timestamps, from the start of ``since``'s second (blocking)."""
    query = [("timestamps", "true"), ("limitBytes", str(limit_bytes))]
    if since:
        query.append(("sinceTime", whole_second(since)))
    data = _log_request(api_client, namespace, name, query, 30, container).read()
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def open_log_stream(api_client, namespace: str, name: str, since: Optional[str],
                    read_timeout_s: float, container: Optional[str] = None) -> Any:
    """GET pods/log with ``follow=true&timestamps=true`` from the start of ``since``'s second
    (blocking until the answer's headers): the urllib3 response, to be read as it comes
    (``read1``) and closed by the caller. ApiException if it is not a 2xx."""
    query = [("follow", "true"), ("timestamps", "true")]
    if since:
        query.append(("sinceTime", whole_second(since)))
    return _log_request(api_client, namespace, name, query, (10, read_timeout_s),
                        container).response


def read_page(api_client, namespace: str, name: str, cursor: Optional[Cursor],
              max_bytes: int, max_read_bytes: int = MAX_READ_BYTES,
              container: Optional[str] = None) -> Optional[Tuple[str, bool]]:
    """The log from the start of the cursor's second, with room for the already-returned
    lines of that second that will be skipped: (text, whole), ``whole`` being False when the
    API cut it at the limit. None when there is no log to read (not started, or deleted).

    The room is a guess (``2 * max_bytes + 64 KiB``), and a pod may print more than that
    within one second before the cursor: a page cut there holds only lines the cursor has
    covered, so the cursor would never move (and, the pod ended, its output would seem to
    end there). So a cut page with no complete line past the cursor is read again with
    twice the limit, until it has one or is whole. ``max_read_bytes`` bounds the memory one
    read takes: beyond it, ``LogTooDense``, an error the user can read, rather than output
    that silently stops.
    """
    limit = 2 * max_bytes + 65536
    cap = max(limit, max_read_bytes)
    while True:
        try:
            text = read_log(api_client, namespace, name, cursor[0] if cursor else None, limit,
                            container)
        except ApiException as e:
            if e.status in (400, 404):
                return None
            raise
        whole = len(text.encode()) < limit
        if whole or advances(text, cursor):
            return text, whole
        if limit >= cap:
            raise LogTooDense(
                f"cannot read the output of pod {name} past "
                f"{cursor[0] if cursor else 'its start'}: it printed more than {cap} bytes "
                "within that second (or in one line), and the Kubernetes log API can only be "
                "read from the start of a second")
        limit = min(2 * limit, cap)


def advances(text: str, cursor: Optional[Cursor]) -> bool:
    """Whether the page ``text`` has a complete line past ``cursor``, as ``new_lines``
    counts (its unterminated last line does not count: a cut page ends mid-line)."""
    return bool(new_lines(text, cursor, 0, False)[0])


class LogReader:
    """``read_page`` with a short memory, so the API load does not grow with the poll rate.

    Fetches of a running pod's log share one API read per interval; the interval starts at
    ``min_interval_s`` and doubles (up to ``max_interval_s``) while the log stays the same,
    so a quiet pod costs one read every few seconds however often its job is fetched, and
    new output reaches clients at most one interval late. A read made after the pod ended
    is complete and kept. An LRU bounded in bytes: a cache, not state — any replica works without it.
    A page is kept per pod, cursor second and ``max_bytes``; a cut one is reused only while it
    has lines past the cursor (``read_page`` may have grown it for an earlier cursor).
    """

    def __init__(self, api_client, min_interval_s: float = 1.0, max_interval_s: float = 5.0,
                 max_cached_bytes: int = 64 << 20, max_read_bytes: int = MAX_READ_BYTES):
        self.api_client = api_client
        self.max_read_bytes = max_read_bytes
        self.min_interval_s, self.max_interval_s = min_interval_s, max_interval_s
        self.max_cached_bytes = max_cached_bytes
        self._cached_bytes = 0
        self._pods: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def page(self, namespace: str, name: str, cursor: Optional[Cursor], max_bytes: int,
             ended: bool, container: Optional[str] = None) -> Optional[Tuple[str, bool]]:
        """Like ``read_page``; ``ended``: the pod has terminated (its log is final)."""
        pod, since = (namespace, name, container), (cursor[0].split(".")[0] if cursor else "", max_bytes)
        now = time.monotonic()
        with self._lock:
            last = self._pods.get(pod)  # entries are replaced, never changed: read unlocked
        if last is not None and last["since"] == since:
            # Once the pod has ended only a read made after its end will do.
            fresh = not ended and now - last["at"] < last["interval"]
            cached = last["page"]
            if (last["final"] or fresh) and (
                    cached is None or cached[1] or advances(cached[0], cursor)):
                with self._lock:
                    if self._pods.get(pod) is last:
                        self._pods.move_to_end(pod)
                return cached
        page = read_page(self.api_client, namespace, name, cursor, max_bytes,
                         self.max_read_bytes, container)
        with self._lock:
            quiet = last is not None and last["since"] == since and last["page"] == page
            interval = min(last["interval"] * 2, self.max_interval_s) if quiet \
                else self.min_interval_s
            size = len(page[0]) if page else 0
            held = self._pods.get(pod)  # not ``last`` if another fetch replaced it meanwhile
            self._cached_bytes += size - (len(held["page"][0]) if held and held["page"] else 0)
            self._pods[pod] = {"at": now, "since": since, "page": page, "interval": interval,
                               "final": ended and page is not None}
            self._pods.move_to_end(pod)
            while self._cached_bytes > self.max_cached_bytes and len(self._pods) > 1:
                _, old = self._pods.popitem(last=False)
                self._cached_bytes -= len(old["page"][0]) if old["page"] else 0
        return page


def new_lines(log: str, cursor: Optional[Cursor], max_bytes: int, complete: bool,
              line_overhead: int = 0) -> Tuple[List[str], Optional[Cursor], bool]:
    """The lines of ``log`` after ``cursor``, at most about ``max_bytes`` of them (each
    counted with a newline and ``line_overhead`` more bytes; one line at least).

    Returns (lines, next cursor, more): ``more`` is True when lines were left for later.
    A last line without a newline is held back unless ``complete`` (the pod has ended).
    """
    entries = log.split("\n")
    tail = entries.pop()  # "" after a final newline, else a line still being written
    if tail and complete:
        entries.append(tail)
    out: List[str] = []
    size, last = 0, cursor
    after = time_key(cursor[0]) if cursor else None
    skip = cursor[1] if cursor else 0
    for entry in entries:
        stamp, _, text = entry.partition(" ")
        key = time_key(stamp)
        if after is not None and key < after:
            continue
        if after is not None and key == after and skip:
            skip -= 1
            continue
        if out and size + len(text) + 1 + line_overhead > max_bytes:
            return out, last, True
        out.append(text)
        size += len(text) + 1 + line_overhead
        same = last is not None and time_key(last[0]) == key
        last = (stamp, last[1] + 1 if same else 1)
    return out, last, False
