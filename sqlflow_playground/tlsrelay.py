"""The gRPC door's TLS: asks for a client certificate without requiring one.

Why this exists: the deployed SQLFlow client never presents a client certificate, yet one
that is presented must chain to the CA (and not be revoked) and then names the caller, as
on the REST side. grpcio's server credentials can only require a certificate or not ask
for one at all (``require_client_auth``), never *ask and verify if given*. So the door's
public port is this relay: it terminates TLS itself with an ``ssl.CERT_OPTIONAL`` context
(the REST side's CA, CRL and TLS floor; ALPN ``h2``; re-read on SIGHUP like REST's), and
pipes the decrypted bytes to the gRPC server, which listens on an ephemeral loopback port
in plain text. The relay remembers, per connection it opens to that server, the identity
the client certificate gave (or None); the servicer looks it up by the peer address gRPC
reports (``peer_identity``). A connection to the gRPC server that did not come through the
relay has no entry, and is refused.

TLS is the event loop's own (``create_server(ssl=…)``; asyncio's and uvloop's alike:
uvloop's server-side ``start_tls`` stalls). A context cannot be swapped under a listening
server, so a reload listens anew on the same port (SO_REUSEPORT) with the new context and
closes the old listener; open connections keep theirs.

Bounds, as on REST: a TLS handshake longer than ``handshake_timeout_s`` is cut; no more
than ``max_connections`` at once (more are closed once accepted); a connection with no
bytes either way for ``idle_timeout_s`` is closed (gRPC clients reconnect on their next
call). Refused connections are logged at most once per ``LOG_EVERY_S``.
"""
import asyncio
import logging
import socket
import ssl
import time
from typing import Callable, Dict, Optional, Tuple

from .errors import PlaygroundError
from .identity import Identity

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
SWEEP_EVERY_S = 1.0
MAX_PENDING_BYTES = 1 << 20  # held while the relay connects to the gRPC server


class _Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives is written to ``peer``."""

    def __init__(self, relay: "_Connection"):
        self.relay = relay
        self.transport: Optional[asyncio.Transport] = None
        self.peer: Optional["_Side"] = None
        self.pending = []  # bytes received before the other end was connected

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self is self.relay.client:  # the TLS handshake is done: connect onwards
            self.relay.relay.accepted(self.relay)

    def data_received(self, data: bytes) -> None:
        self.relay.last_active = time.monotonic()
        if self.pending or self.peer.transport is None:  # in order, after what waits
            self.pending.append(data)
            if sum(map(len, self.pending)) > MAX_PENDING_BYTES:
                self.relay.close()
                return
            self.transport.pause_reading()
        else:
            self.peer.transport.write(data)

    def eof_received(self):
        """Pass a half-close on where the other end can take one; keep this end's write
        side open only where its transport can (TLS cannot: it closes)."""
        if self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
            if self.transport is not None and self.transport.can_write_eof():
                return True  # the other's remaining answer still comes this way
        self.relay.close(graceful=True)
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.relay.close(graceful=True)

    # The other end's buffer is full: stop reading here until it drains.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Connection:
    """A client's TLS connection and the relay's plain one to the gRPC server."""

    def __init__(self, relay: "TlsRelay"):
        self.relay = relay
        self.client = _Side(self)
        self.server = _Side(self)
        self.client.peer, self.server.peer = self.server, self.client
        self.accepted = self.last_active = time.monotonic()
        self.local_port: Optional[int] = None
        self.closed = False

    def close(self, graceful: bool = False) -> None:
        """Close both ends: ``graceful`` sends what is buffered first (an end said
        goodbye); otherwise drop it (refused, idle, timed out)."""
        if self.closed:
            return
        self.closed = True
        if self.local_port is not None:  # forgotten before the port can be reused
            self.relay.identities.pop(self.local_port, None)
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.close() if graceful else side.transport.abort()
        self.relay.connections.discard(self)


class TlsRelay:
    """``await start(host, port)``; ``peer_identity(context.peer())`` in the servicer."""

    def __init__(self, context_factory: Callable[[], ssl.SSLContext], target_port: int,
                 identify: Callable[[dict], Identity], handshake_timeout_s: float = 10.0,
                 idle_timeout_s: float = 300.0, max_connections: int = 1000):
        self.context = context_factory()
        self.context_factory = context_factory
        self.target_port = target_port
        self.identify = identify
        self.handshake_timeout_s = handshake_timeout_s or None
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        #: local port of the relay's connection to the gRPC server -> the client's
        #: identity (None: no client certificate)
        self.identities: Dict[int, Optional[Identity]] = {}
        self.connections: set = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._sweeper: Optional[asyncio.Task] = None
        self._refused: Dict[str, int] = {}
        self._logged_at = 0.0

    async def start(self, host: Optional[str], port: int) -> int:
        self.host = host or None
        self._server = await self._listen(self._bind(self.host, port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return self.port

    @staticmethod
    def _bind(host: Optional[str], port: int) -> socket.socket:
        """A listening socket; SO_REUSEPORT so a reload can listen beside the old one."""
        family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    async def _listen(self, sock: socket.socket) -> asyncio.AbstractServer:
        return await asyncio.get_running_loop().create_server(
            self._connection, sock=sock, ssl=self.context,
            ssl_handshake_timeout=self.handshake_timeout_s)

    def reload(self) -> None:
        """New connections use a new context (certificates, CRL); open ones keep theirs.
        The new listener is bound before the old one closes, so no connection attempt
        finds the port closed (one in the old listener's backlog is reset)."""
        context = self.context_factory()
        if self._server is None:
            self.context = context
            return
        sock = self._bind(self.host, self.port)
        old, self.context = self._server, context
        old.close()
        self._server = None
        task = asyncio.get_running_loop().create_task(self._listen(sock))
        task.add_done_callback(self._listening)

    def _listening(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is not None:
            log.error("the gRPC door could not listen again after a reload: %s",
                      task.exception())
            return
        self._server = task.result()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close()

    def peer_identity(self, peer: str) -> Tuple[bool, Optional[Identity]]:
        """(whether ``peer``, as gRPC names it, is one of the relay's connections, the
        identity its client certificate gave, None without one)."""
        host, _, port = peer.rpartition(":")
        if not host.startswith(("ipv4:127.0.0.1", "ipv6:[::1]")) or not port.isdigit():
            return False, None
        key = int(port)
        return key in self.identities, self.identities.get(key)

    # -- per connection ------------------------------------------------------------

    def _connection(self) -> asyncio.Protocol:
        """A new client connection's protocol: its ``connection_made`` comes once the TLS
        handshake verified a certificate, if one was presented (else it never comes)."""
        return _Connection(self).client

    def accepted(self, connection: _Connection) -> None:
        if len(self.connections) >= self.max_connections:
            self._refuse("too many connections")
            connection.client.transport.abort()
            return
        identity = None
        cert = connection.client.transport.get_extra_info("peercert")
        if cert:
            try:
                identity = self.identify(cert)
            except PlaygroundError as e:
                self._refuse(e.message)
                connection.client.transport.abort()
                return
        self.connections.add(connection)
        asyncio.get_running_loop().create_task(self._open(connection, identity))

    async def _open(self, connection: _Connection, identity: Optional[Identity]) -> None:
        try:
            await asyncio.get_running_loop().create_connection(
                lambda: connection.server, "127.0.0.1", self.target_port)
        except OSError as e:
            log.error("the gRPC door's relay cannot reach its gRPC server: %s", e)
            connection.close()
            return
        if connection.closed:
            connection.server.transport.abort()
            return
        connection.local_port = connection.server.transport.get_extra_info("sockname")[1]
        self.identities[connection.local_port] = identity
        for data in connection.client.pending:  # what came before the onward connection
            connection.server.transport.write(data)
        connection.client.pending.clear()
        if connection.client.transport is not None:
            connection.client.transport.resume_reading()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = time.monotonic()
            for connection in list(self.connections):
                if self.idle_timeout_s and now - connection.last_active > self.idle_timeout_s:
                    connection.close()

    def _refuse(self, reason: str) -> None:
        self._refused[reason] = self._refused.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            counts = ", ".join(f"{n} × {r}" for r, n in self._refused.items())
            log.warning("gRPC door refused connections: %s", counts)
            self._refused.clear()
