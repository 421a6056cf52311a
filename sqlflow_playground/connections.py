"""Connection hygiene: the bounds a hostile client meets before any handler runs.

Why this exists: Tornado's HTTPServer has no TLS-handshake timeout and no cap on
connections; its one ``idle_connection_timeout`` (1 h by default) covers both the wait
for a request and the arrival of its header block, so a client sending a byte a second
holds a connection for an hour; its accept loop raises on every readiness event once
file descriptors run out (a traceback each, and a busy loop, since the listening socket
stays readable); a header block over ``max_header_size`` is cut off without an answer,
and a request it cannot take (too many query fields, a bad Host) gets a bare ``400``.

``GatewayHTTPServer`` is an HTTPServer that closes those gaps:

* Its own accept loop. With ``max_connections`` open, a new connection is closed at
  once (never queued); a failing accept (EMFILE, ...) pauses accepting for
  ``ACCEPT_PAUSE_S``. Both are counted and logged at most once per ``LOG_EVERY_S``.
* A sweeper, a few ticks per shortest timeout, closes a connection that stays too long
  in one phase: the TLS handshake (from accept), idle (a keep-alive connection with no
  request under way), a header block (from its first byte). It costs per connection and
  per tick, never per request: Tornado's per-request header timer is switched off (the
  body timeout stays Tornado's ``body_timeout``). It looks at ``SWEEP_BATCH``
  connections per turn of the loop, so that 10,000 open ones never hold a turn for long.
* A header block over the limit is answered ``431`` and an unparsable request ``400``,
  with the JSON error body of every other error.
* A refused TLS handshake is logged (rate-limited, like refused connections) with the
  reason in words and the client certificate's subject, which the server remembers from
  the handshake as it goes by (``ssl``'s message callback), instead of Tornado's raw
  "SSL Error on …" line for each.

The sweeper and the 431 read private IOStream state (``_read_regex``: set while a header
block is awaited, ``_read_buffer_size``, ``_read_future``, ``_read_max_bytes``);
tests/test_hostile_connections.py fails if a Tornado upgrade changes it.
"""
import itertools
import json
import logging
import resource
import socket
import ssl
import threading
from collections import Counter
from typing import Any, Dict, Iterator, Optional

from tornado import httputil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop, PeriodicCallback
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError, UnsatisfiableReadError
from tornado.netutil import ssl_wrap_socket

from .accesslog import REQUEST_ID_HEADER, access_log, request_id_for

log = logging.getLogger(__name__)

ACCEPT_BATCH = 128  # accepts per readiness event, as Tornado's own loop
CLOSE_BATCH = 16  # expired connections closed per loop iteration
SWEEP_BATCH = 500  # connections the sweeper looks at per loop iteration
ACCEPT_PAUSE_S = 0.1  # after a failed accept: the listening socket stays readable meanwhile
LOG_EVERY_S = 10.0  # at most one line per this long about refused or closed connections
FD_RESERVE = 128  # descriptors kept beside connections for the store, logs, the cluster
MAX_MESSAGE_CHARS = 200
# What a TLS stream reads at a time. A read of a TLS socket (SSL_read) hands back at most
# one record, 16 KiB of plaintext, and Tornado zeroes a fresh buffer of this size at every
# read attempt, the many that find nothing included: its 64 KiB default cost a heart beat
# 48 KiB of memset for no byte more (a tenth of its instructions, callgrind).
TLS_READ_CHUNK = 16 * 1024
LINGER_S, LINGER_BYTES = 2.0, 4 << 20  # after a 431: read and drop at most this

HANDSHAKE, IDLE, HEADERS, BUSY = "TLS handshake", "idle", "header block", "busy"
MAX_REASONS = 50  # distinct reasons a tally keeps between two lines; more count as "other"
# Why a handshake was refused, in words: OpenSSL's verify message or error reason ->
VERIFY_REASONS = {
    "unable to get local issuer certificate": "a certificate from an unknown CA",
    "self-signed certificate": "a certificate from an unknown CA",
    "certificate has expired": "an expired certificate",
    "certificate revoked": "a revoked certificate",
    "unsuitable certificate purpose": "not a client certificate",
}
SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate",
    "HTTP_REQUEST": "plain HTTP sent to the TLS port",
    "TLSV1_ALERT_UNKNOWN_CA": "the client does not trust the server's certificate "
                              "(its CA file is not this server's CA)",
    "UNSUPPORTED_PROTOCOL": "a TLS version below 1.2",
    "WRONG_VERSION_NUMBER": "not TLS",
}


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("file descriptors: cannot raise the soft limit %d to %d: %s",
                        soft, target, e)
            return soft
        log.info("file descriptors: soft limit raised from %d to %d (the hard limit)",
                 soft, target)
        return target
    log.info("file descriptors: soft limit %d (the hard limit)", soft)
    return soft


def fd_reserve(executor_threads: int, max_jobs: int) -> int:
    """Descriptors the rest of the server may hold: database connections per executor
    thread, pipes and output files per running job, and a margin."""
    return FD_RESERVE + 2 * executor_threads + 4 * max_jobs


def connection_cap(wanted: int, fd_limit: int, reserve: int) -> int:
    """``wanted``, lowered so connections never take the descriptors the rest needs."""
    room = max(fd_limit - reserve, fd_limit // 2)
    if wanted > room:
        log.warning("max_connections %d does not fit the file-descriptor limit %d "
                    "(%d kept for the store, executor and jobs): capping at %d",
                    wanted, fd_limit, reserve, room)
        return room
    return wanted


class _Tally:
    """Counts events by reason: the first is logged at once, the rest summed up in one
    line per ``LOG_EVERY_S`` while they keep coming."""

    def __init__(self, title: str):
        self.title = title
        self.counts: Counter = Counter()
        self._timer: Optional[object] = None

    def add(self, reason: str) -> None:
        if reason not in self.counts and len(self.counts) >= MAX_REASONS:
            reason = "other"
        self.counts[reason] += 1
        if self._timer is None:
            self.flush()
            self._timer = IOLoop.current().call_later(LOG_EVERY_S, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.counts:
            self.flush()
            self._timer = IOLoop.current().call_later(LOG_EVERY_S, self._tick)

    def flush(self) -> None:
        if self.counts:
            log.warning("%s (at most one such line per %gs): %s", self.title, LOG_EVERY_S,
                        "; ".join(f"{n} x {reason}" for reason, n in self.counts.items()))
            self.counts.clear()

    def stop(self) -> None:
        if self._timer is not None:
            IOLoop.current().remove_timeout(self._timer)
            self._timer = None
        self.flush()


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message[:MAX_MESSAGE_CHARS]}}).encode()


class _Answers431:
    """Stream mixin: when a header block outgrows ``max_header_size`` Tornado closes the
    stream from inside its read; this answers 431 just before it does, and lingers."""

    _linger = False

    def close(self, exc_info: Any = False) -> None:
        if (isinstance(exc_info, UnsatisfiableReadError) and self._read_regex is not None
                and not self.closed()):
            self._answer_header_too_large()
        super().close(exc_info)  # type: ignore[misc]

    def close_fd(self) -> None:
        if not self._linger:
            return super().close_fd()  # type: ignore[misc]
        sock, self.socket = self.socket, None
        _Linger(sock)

    def _answer_header_too_large(self) -> None:
        request_id = request_id_for({})
        body = _error_body("request_header_fields_too_large",
                           f"the request's header block is larger than "
                           f"{self._read_max_bytes} bytes")
        head = ("HTTP/1.1 431 Request Header Fields Too Large\r\n"
                "Content-Type: application/json; charset=UTF-8\r\n"
                f"Content-Length: {len(body)}\r\n{REQUEST_ID_HEADER}: {request_id}\r\n"
                "Connection: close\r\n\r\n").encode()
        try:
            self.write(head + body)  # written now, before the close that follows
        except StreamClosedError:
            return
        self._linger = True
        access_log.warning(json.dumps({"request_id": request_id, "status": 431,
                                       "remote_ip": _peer(self)}))


class _Linger:
    """Read and drop what the client still sends, for a moment, then close: closing a
    socket with unread input sends a reset, which can destroy the answer before the
    client has read it (the client is often still sending its oversized header)."""

    lingering: "set[_Linger]" = set()

    def __init__(self, sock: socket.socket):
        self.sock, self.left, self.loop = sock, LINGER_BYTES, IOLoop.current()
        self.lingering.add(self)
        self.timer = self.loop.call_later(LINGER_S, self.close)
        self.loop.add_handler(sock, self.drain, IOLoop.READ)

    def drain(self, fd: Any, events: int) -> None:
        try:
            while self.left > 0:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.left -= len(data)
        except (BlockingIOError, ssl.SSLWantReadError):
            return
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.sock is None:
            return
        self.loop.remove_timeout(self.timer)
        self.loop.remove_handler(self.sock)
        self.sock.close()
        self.sock = None
        self.lingering.discard(self)


class _QuietHandshakes(logging.Filter):
    """Drops Tornado's own line for a failed handshake of our streams (the server logs
    its own, rate-limited), leaving any other Tornado stream's alone."""

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(self.local, "quiet", False)
                    and record.msg == "SSL Error on %s %s: %s")


logging.getLogger("tornado.general").addFilter(_QuietHandshakes())


class _SSLStream(_Answers431, SSLIOStream):
    def _do_ssl_handshake(self) -> None:
        _QuietHandshakes.local.quiet = True
        try:
            super()._do_ssl_handshake()
        finally:
            _QuietHandshakes.local.quiet = False


_HANDSHAKE_RECORD = 22  # TLS content type "handshake"
_CERTIFICATE_MESSAGE = 11  # TLS handshake message type "certificate"
_TLS13 = 0x0304
# The C-level message callback of SSLContext. ``ssl.py``'s own ``_msg_callback`` setter
# wraps the callback in a function turning every argument into an enum, which costs
# ~7 Python calls for each of the ~44 messages and record headers of a handshake (and
# 4 per keep-alive request): a third of a new connection's Python work in a profile.
_RAW_MSG_CALLBACK = super(ssl.SSLContext, ssl.SSLContext)._msg_callback  # noqa: SLF001


def _remember_client_cert(conn: Any, direction: str, version: int, content_type: int,
                          msg_type: int, data: bytes) -> None:
    """An SSLContext message callback (raw: plain ints): keeps the client's Certificate
    message (the first certificate of it) on its socket, so a refused handshake can name
    the subject."""
    if msg_type == _CERTIFICATE_MESSAGE and content_type == _HANDSHAKE_RECORD \
            and direction == "read":
        conn.sfp_client_cert = (data[:16384], version == _TLS13)


_remember_client_cert.user_function = _remember_client_cert  # what ssl.py's getter reads


def watch_client_certs(context: ssl.SSLContext) -> None:
    """Install ``_remember_client_cert`` on a context, once (without ssl.py's wrapper)."""
    if getattr(context, "_msg_callback", False) is None:
        _RAW_MSG_CALLBACK.__set__(context, _remember_client_cert)


def certificate_subject(message: Optional[bytes], tls13: bool) -> Optional[str]:
    """"CN=…" of the first certificate in a TLS Certificate handshake message; None if
    there is none or it cannot be read. A few lines of DER rather than a dependency."""
    def tlv(buf: bytes, i: int):  # (tag, start of the value, its end)
        tag, n = buf[i], buf[i + 1]
        i += 2
        if n & 0x80:
            n, i = int.from_bytes(buf[i:i + (n & 0x7F)], "big"), i + (n & 0x7F)
        return tag, i, i + n
    try:
        i = 4 + (1 + message[4] if tls13 else 0) + 3  # header, request context, list length
        der = message[i + 3:i + 3 + int.from_bytes(message[i:i + 3], "big")]
        _, i, _ = tlv(der, 0)  # Certificate
        _, i, end = tlv(der, i)  # TBSCertificate: [version] serial sigalg issuer validity subject
        fields = []
        while i < end and len(fields) < 6:
            tag, start, i = tlv(der, i)
            fields.append((tag, start, i))
        _, start, stop = fields[5 if fields[0][0] == 0xA0 else 4]
        subject = der[start:stop]
        at = subject.find(b"\x06\x03\x55\x04\x03")  # the OID of commonName
        if at < 0:
            return "no common name"
        _, start, stop = tlv(subject, at + 5)
        return "CN=" + subject[start:stop].decode("utf-8", "replace")[:64]
    except (IndexError, TypeError, ValueError):
        return None


def refusal(error: BaseException) -> str:
    """Why the handshake failed, in words."""
    message = getattr(error, "verify_message", None)
    if message:
        return VERIFY_REASONS.get(message, message)
    reason = getattr(error, "reason", None)
    return SSL_REASONS.get(reason, reason or str(error)[:MAX_MESSAGE_CHARS])


class _PlainStream(_Answers431, IOStream):
    pass


def _peer(stream: IOStream) -> Optional[str]:
    try:
        return stream.socket.getpeername()[0]
    except (OSError, AttributeError, IndexError):
        return None


class _InputErrorsAsJSON(httputil.HTTPMessageDelegate):
    """Around the application's delegate: a request Tornado refuses while building it
    (too many query fields, a bad Host) is answered with a JSON 400, not a bare one."""

    def __init__(self, delegate: httputil.HTTPMessageDelegate,
                 connection: httputil.HTTPConnection):
        self.delegate = delegate
        self.connection = connection

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        try:
            return self.delegate.headers_received(start_line, headers)
        except httputil.HTTPInputError as e:
            self.delegate = httputil.HTTPMessageDelegate()  # the body, if any, is dropped
            self._answer_400(start_line, headers, str(e))
            return None

    def data_received(self, chunk: bytes) -> Any:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()

    def _answer_400(self, start_line: Any, headers: httputil.HTTPHeaders, message: str) -> None:
        request_id = request_id_for(headers)
        body = _error_body("bad_request", message)
        self.connection.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", 400, "Bad Request"),
            httputil.HTTPHeaders({"Content-Type": "application/json; charset=UTF-8",
                                  "Content-Length": str(len(body)), "Connection": "close",
                                  REQUEST_ID_HEADER: request_id}),
            None if start_line.method == "HEAD" else body)
        self.connection.finish()
        access_log.warning(json.dumps({
            "request_id": request_id, "method": start_line.method,
            "path": start_line.path.partition("?")[0][:MAX_MESSAGE_CHARS], "status": 400,
            "remote_ip": getattr(getattr(self.connection, "context", None), "remote_ip", None)}))


class _Watch:
    """What the sweeper last saw of one connection: its phase, since when."""

    __slots__ = ("phase", "mark", "since")

    def __init__(self, phase: str, since: float):
        self.phase, self.mark, self.since = phase, None, since


class GatewayHTTPServer(HTTPServer):
    """HTTPServer with a handshake, header and idle timeout, a connection cap, a quiet
    accept loop and JSON answers to what Tornado refuses (see the module docstring).

    Extra keyword arguments: ``handshake_timeout_s``, ``header_timeout_s``,
    ``idle_timeout_s`` (None or 0: none) and ``max_connections``; the rest are
    HTTPServer's (``body_timeout`` among them).
    """

    def initialize(self, request_callback: Any, *, handshake_timeout_s: Optional[float] = None,
                   header_timeout_s: Optional[float] = None,
                   idle_timeout_s: Optional[float] = None, max_connections: int = 10000,
                   **kwargs: Any) -> None:
        super().initialize(request_callback, **kwargs)
        self.conn_params.header_timeout = None  # the sweeper watches idle and header time
        # A route the application answers before routing (handlers/fast_path.py),
        # falling back to the application's own delegate for anything else.
        self.fast_path = getattr(request_callback, "settings", {}).get("fast_path")
        self.max_connections = max_connections
        self.limits: Dict[str, Optional[float]] = {
            HANDSHAKE: handshake_timeout_s or None, IDLE: idle_timeout_s or None,
            HEADERS: header_timeout_s or None, BUSY: None}
        self._watched: Dict[IOStream, _Watch] = {}
        self._listening: Dict[int, socket.socket] = {}
        self._paused: Dict[int, object] = {}
        self._refused = _Tally("new connections not served")
        self._refused_tls = _Tally("TLS handshakes refused")
        self._expired = _Tally("connections closed for taking too long")
        timeouts = [t for t in self.limits.values() if t]
        self._sweeper = None
        self._sweep_left: Optional[Iterator] = None  # what a sweep under way has yet to see
        if timeouts:  # a tick of a quarter of the shortest: closes after 1 to 1.5 timeouts
            tick_s = min(1.0, max(0.05, min(timeouts) / 4))
            self._sweeper = PeriodicCallback(self._sweep, tick_s * 1000)

    @property
    def open_connections(self) -> int:
        """Connections from accept to close (lingering ones after a 431 count too)."""
        return len(self._watched) + len(_Linger.lingering)

    # -- accepting -------------------------------------------------------------

    def add_sockets(self, sockets: Any) -> None:
        for sock in sockets:
            self._listening[sock.fileno()] = sock
            self._listen(sock)
        if self._sweeper is not None and not self._sweeper.is_running():
            self._sweeper.start()

    def _listen(self, sock: socket.socket) -> None:
        IOLoop.current().add_handler(sock, lambda fd, events: self._accept(sock), IOLoop.READ)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS...: try again in a moment
                loop = IOLoop.current()
                loop.remove_handler(sock)
                self._paused[sock.fileno()] = loop.call_later(ACCEPT_PAUSE_S, self._resume, sock)
                self._refused.add(f"accept failed ({e.strerror or e}): accepting paused "
                                  f"{ACCEPT_PAUSE_S:g}s, the client waits")
                return
            if len(self._watched) + len(_Linger.lingering) >= self.max_connections:
                conn.close()
                self._refused.add(f"closed at once: {self.max_connections} connections open "
                                  "(max_connections)")
                continue
            try:
                if self.ssl_options is not None:
                    context = self.ssl_options
                    watch_client_certs(context)  # a new context (after a reload) too
                    conn = ssl_wrap_socket(conn, context, server_side=True,
                                           do_handshake_on_connect=False)
                    stream: IOStream = _SSLStream(
                        conn, max_buffer_size=self.max_buffer_size,
                        read_chunk_size=self.read_chunk_size or TLS_READ_CHUNK)
                else:
                    stream = _PlainStream(conn, max_buffer_size=self.max_buffer_size,
                                          read_chunk_size=self.read_chunk_size)
            except OSError:  # the peer is gone already (ssl.SSLError is an OSError)
                conn.close()
                continue
            self.handle_stream(stream, address)

    def _resume(self, sock: socket.socket) -> None:
        if self._paused.pop(sock.fileno(), None) is not None:
            self._listen(sock)

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if not isinstance(stream, SSLIOStream):
            self._watched[stream] = _Watch(BUSY, IOLoop.current().time())
            super().handle_stream(stream, address)
            return
        self._watched[stream] = _Watch(HANDSHAKE, IOLoop.current().time())
        tls = stream.socket
        stream.wait_for_handshake().add_done_callback(
            lambda done: self._handshake_done(done, stream, address, tls))

    def _handshake_done(self, done: Any, stream: IOStream, address: Any, tls: Any) -> None:
        # One that timed out was logged by the sweeper; a peer that left mid-way is not news.
        if done.cancelled() or done.exception() is not None or stream.closed():
            self._watched.pop(stream, None)
            error = None if done.cancelled() else done.exception()
            if isinstance(error, ssl.SSLError) and not isinstance(
                    error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                self._log_refusal(error, address, tls)
            return
        vars(tls).pop("sfp_client_cert", None)  # only a refusal needs it
        self._watched[stream].phase = BUSY
        super().handle_stream(stream, address)

    def _log_refusal(self, error: ssl.SSLError, address: Any, tls: Any) -> None:
        message, tls13 = getattr(tls, "sfp_client_cert", (None, False))
        who = certificate_subject(message, tls13) or "no certificate read"
        peer = address[0] if isinstance(address, tuple) and address else "?"
        self._refused_tls.add(f"{refusal(error)} ({who}, from {peer})")

    def on_close(self, server_conn: Any) -> None:
        self._watched.pop(server_conn.stream, None)
        super().on_close(server_conn)

    def start_request(self, server_conn: Any, request_conn: httputil.HTTPConnection) -> Any:
        delegate = super().start_request(server_conn, request_conn)
        if self.fast_path is not None:
            delegate = self.fast_path(self.request_callback, request_conn, delegate)
        return _InputErrorsAsJSON(delegate, request_conn)

    # -- the sweeper -----------------------------------------------------------

    def _sweep(self) -> None:
        """Look at every connection, unless the last sweep is still under way: a slice of
        SWEEP_BATCH per turn of the loop, so that with thousands open no turn is held for
        long (10,000 connections cost 3-20 ms of Python per sweep: in one piece, every
        request arriving meanwhile, once a tick, would wait for it)."""
        if self._sweep_left is None:
            self._sweep_left = iter(list(self._watched))  # a list of references, no tuples
            self._sweep_part()

    def _sweep_part(self) -> None:
        left = self._sweep_left
        if left is None:  # stopped meanwhile
            return
        now = IOLoop.current().time()
        watched, stale = self._watched, []
        part = list(itertools.islice(left, SWEEP_BATCH))
        for stream in part:
            watch = watched.get(stream)
            if watch is None:
                continue  # closed since the sweep began
            if watch.phase is not HANDSHAKE:
                mark = stream._read_future if stream._read_regex is not None else None
                phase = BUSY if mark is None else HEADERS if stream._read_buffer_size else IDLE
                if phase is not watch.phase or mark is not watch.mark:
                    watch.phase, watch.mark, watch.since = phase, mark, now
                    continue
            limit = self.limits[watch.phase]
            if limit is not None and now - watch.since > limit:
                stale.append((stream, watch.phase))
        if len(part) == SWEEP_BATCH:
            IOLoop.current().add_callback(self._sweep_part)
        else:
            self._sweep_left = None
        if stale:
            self._close(stale)

    def _close(self, stale: list) -> None:
        """Close a few per loop iteration: each close sets off callbacks of its own, and
        hundreds at once would keep every other connection waiting behind them."""
        for stream, phase in stale[:CLOSE_BATCH]:
            if not stream.closed():
                stream.close()
                self._expired.add(f"{phase} longer than {self.limits[phase]:g}s")
        del stale[:CLOSE_BATCH]
        if stale:
            IOLoop.current().add_callback(self._close, stale)

    # -- stopping --------------------------------------------------------------

    def stop(self) -> None:
        loop = IOLoop.current()
        for fd, sock in self._listening.items():
            paused = self._paused.pop(fd, None)
            if paused is not None:
                loop.remove_timeout(paused)
            else:
                loop.remove_handler(sock)
            sock.close()
        self._listening.clear()
        if self._sweeper is not None:
            self._sweeper.stop()
        self._sweep_left = None
        self._refused.stop()
        self._refused_tls.stop()
        self._expired.stop()
        super().stop()

    async def close_all_connections(self) -> None:
        for stream, watch in list(self._watched.items()):
            if watch.phase is HANDSHAKE:
                stream.close()
        for linger in list(_Linger.lingering):
            if linger.loop is IOLoop.current():
                linger.close()
        await super().close_all_connections()
