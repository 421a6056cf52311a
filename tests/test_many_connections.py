"""Many users (issue 15): what the server keeps per open connection, and what it does
per connection on its own (the sweeper), must stay small and in small pieces with
thousands of connections open. bench/connections.py measures it with 10,000; these check
the behaviour that makes it so, with real TLS where it matters and without timing.
"""
import asyncio
import socket
import ssl
import time

from tornado.ioloop import IOLoop

from conftest import client_context, wait_until
from sqlflow_playground import connections
from sqlflow_playground.connections import BUSY, IDLE, GatewayHTTPServer, _Watch

HEART_BEAT = b"GET /api/heart_beat?user_id=alice HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def tls_connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def heart_beat(sock: ssl.SSLSocket) -> int:
    """One heart beat on an open connection; the answer's status."""
    sock.sendall(HEART_BEAT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1])


def is_closed_by_server(sock: ssl.SSLSocket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except (ConnectionError, ssl.SSLError, OSError):
        return True


async def _server_streams(server) -> list:
    return list(server.gateway.http._watched)


# -- the client's Certificate message ------------------------------------------------------

def test_client_certificate_message_is_not_kept_once_the_handshake_succeeded(make_server, certs):
    """The bytes of the client's Certificate message are kept on the TLS socket during the
    handshake (a refusal is logged with the subject); a connection that got through must
    not carry them for the rest of its life: thousands are held open at once."""
    server = make_server()
    alice = client_context(certs.dir, "alice")
    fresh = tls_connect(server.port, alice)  # handshake done, no request yet
    served = tls_connect(server.port, alice)
    assert heart_beat(served) in (200, 404)
    assert wait_until(lambda: len(server.call(_server_streams(server))) == 2)
    streams = server.call(_server_streams(server))
    # the server finished its side of the handshake (its stream is past that phase)
    assert wait_until(lambda: all(server.gateway.http._watched[s].phase is not
                                  connections.HANDSHAKE for s in streams))
    for stream in streams:
        assert "sfp_client_cert" not in vars(stream.socket), vars(stream.socket).keys()
    # (that a refused handshake is still logged with the subject: tests/test_tls_errors.py)
    fresh.close()
    served.close()


# -- the sweeper, in slices ----------------------------------------------------------------

class _FakeStream:
    """What the sweeper reads of an IOStream, counting how often it was looked at."""

    looked = 0

    def __init__(self) -> None:
        self._read_future = object()
        self._read_buffer_size = 0
        self.closed_ = False

    @property
    def _read_regex(self):
        _FakeStream.looked += 1
        return b"\r?\n\r?\n"

    def closed(self) -> bool:
        return self.closed_

    def close(self) -> None:
        self.closed_ = True


def test_a_sweep_looks_at_a_slice_of_the_connections_per_loop_turn(monkeypatch):
    """With thousands of connections open, one sweep must not hold the loop: it looks at
    SWEEP_BATCH connections per turn, and still gets to all of them, closing the idle
    ones past the idle timeout (and only those)."""
    monkeypatch.setattr(connections, "SWEEP_BATCH", 50, raising=False)
    n = 50 * 7 + 3

    async def main():
        http = GatewayHTTPServer(lambda *a: None, idle_timeout_s=100.0)
        now = IOLoop.current().time()  # the sweeper's clock
        streams = [_FakeStream() for _ in range(n)]
        for i, stream in enumerate(streams):
            watch = http._watched[stream] = _Watch(IDLE, 0.0)
            watch.mark = stream._read_future
            # every third one has been idle since long ago; the others just turned idle
            watch.since = now - (1000.0 if i % 3 == 0 else 0.0)
        _FakeStream.looked = 0
        http._sweep()
        first_turn = _FakeStream.looked
        http._sweep()  # a tick while the sweep is under way starts no second one
        assert _FakeStream.looked == first_turn
        for _ in range(100):
            if http._sweep_left is None:
                break
            await asyncio.sleep(0)
        for _ in range(100):  # the closes go CLOSE_BATCH per turn too
            await asyncio.sleep(0)
        http._expired.stop()
        return first_turn, streams

    first_turn, streams = asyncio.run(main())
    assert first_turn == 50, first_turn
    assert _FakeStream.looked == n
    assert [s.closed_ for s in streams] == [i % 3 == 0 for i in range(n)]


def test_a_connection_closed_during_a_sweep_is_skipped(monkeypatch):
    monkeypatch.setattr(connections, "SWEEP_BATCH", 2, raising=False)

    async def main():
        http = GatewayHTTPServer(lambda *a: None, idle_timeout_s=1.0)
        streams = [_FakeStream() for _ in range(6)]
        for stream in streams:
            http._watched[stream] = _Watch(BUSY, 0.0)
        _FakeStream.looked = 0
        http._sweep()
        for stream in streams[2:]:  # closed after the sweep began
            del http._watched[stream]
        while http._sweep_left is not None:
            await asyncio.sleep(0)
        return _FakeStream.looked

    assert asyncio.run(main()) == 2


def test_many_connections_sweep_in_slices_idle_ones_close_busy_ones_stay(
        make_server, certs, monkeypatch):
    """Real connections, more than a few slices of them: each idle one is closed by the
    idle timeout, and those that keep sending heart beats stay open."""
    monkeypatch.setattr(connections, "SWEEP_BATCH", 4, raising=False)
    server = make_server(idle_connection_timeout_s=5, header_timeout_s=10)
    alice = client_context(certs.dir, "alice")
    idle = [tls_connect(server.port, alice) for _ in range(15)]
    busy = [tls_connect(server.port, alice) for _ in range(5)]
    deadline = time.monotonic() + 60
    while not all(is_closed_by_server(s) for s in idle):
        assert time.monotonic() < deadline, "idle connections not closed in 60 s"
        for sock in busy:  # each well within the idle timeout
            assert heart_beat(sock) in (200, 404)
        time.sleep(0.3)
    for sock in busy:
        assert heart_beat(sock) in (200, 404)
    for sock in idle + busy:
        sock.close()
