"""The gateway process: wires config → store, provisioner, services → Tornado app, and
owns their lifecycle (start, TLS reload, graceful stop)."""
import datetime
import json
import logging
import os
import socket
from typing import List, Optional

import tornado.gen
import tornado.netutil
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.ioloop import PeriodicCallback

from .accesslog import log_request
from .blocking import BlockingRunner
from .config import Config, ConfigError
from .connections import GatewayHTTPServer, connection_cap, fd_reserve, raise_fd_limit
from .errors import Unavailable
from .handlers import NotFoundHandler, all_handlers, route_templates
from .handlers import ui
from .handlers.base import DISCARD_LIMIT_BYTES
from .handlers.fast_path import FastPath
from .handlers.health import make_health_app
from .handlers.meta import make_metrics_app
from .jobs import JobService, JobSettings
from .metrics import Metrics
from .openapi import build_spec
from .playground import PlaygroundService
from .plugins.registry import PluginRegistry, builtin_plugins, discovered_plugins
from .provisioners import Provisioner, make_provisioner
from .statedir import secure_state_dir
from .sharing import RENEW_INTERVAL_S, SHIP_INTERVAL_S
from .store import Store
from .tls import make_grpc_context, make_server_context

log = logging.getLogger(__name__)


def make_app(config: Config, playground: PlaygroundService, jobs: JobService,
             registry: PluginRegistry, metrics: Metrics,
             runner: BlockingRunner) -> tornado.web.Application:
    activity = ui.Activity()  # the dashboard's last hour (handlers/ui.py)
    return tornado.web.Application(
        all_handlers() + ui.default_handlers + ui.static_handlers,
        default_handler_class=NotFoundHandler,
        playground=playground,
        jobs=jobs,
        registry=registry,
        metrics=metrics,
        runner=runner,
        routes={**route_templates(), **ui.route_templates()},
        openapi=json.dumps(build_spec()),
        log_function=activity.wrap(log_request),
        fast_path=FastPath,  # heart beats and plugin polls before routing (connections.py)
        # The dashboard: its templates; its XSRF cookie, checked by its POST routes only
        # (the JSON API takes no cookies). Its static files are served by its own route
        # under /ui/static/, not static_path (which would add /favicon.ico, /robots.txt).
        template_path=ui.TEMPLATE_DIR,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Strict",
                            "secure": config.tls_enabled},
        ui_activity=activity,
        frontend_certs=config.frontend_certs,
        insecure=not config.tls_enabled,
    )


class Gateway:
    """One running server. ``await start()``, then ``await stop()``."""

    def __init__(self, config: Config, provisioner: Optional[Provisioner] = None):
        if not config.tls_enabled:
            given = [f for f in ("ca_crt", "server_key", "server_crt") if getattr(config, f)]
            if given or not config.insecure:
                raise ConfigError(
                    "--ca_crt, --server_key and --server_crt are all required "
                    "(or pass --insecure to serve plain HTTP without client certificates)")
        for flag in ("ca_crt", "server_key", "server_crt", "crl"):
            path = getattr(config, flag)
            if path and not os.path.isfile(path):
                raise ConfigError(f"--{flag}: no such file: {path}")
        self.config = config
        secure_state_dir(os.path.abspath(config.state_dir))
        self.runner = BlockingRunner(config.executor_threads)
        self.store = Store(config.store_url)
        self.cluster = None
        if config.provisioner == "kubernetes" or config.enable_pod_jobs:
            from .k8s.cluster import Cluster  # the kubernetes client loads only when needed
            self.cluster = Cluster(config.namespace, config.kubeconfig, config.pending_grace_s)
        self.provisioner = provisioner or make_provisioner(config, self.runner, self.cluster)
        self.metrics = Metrics(self.store)
        self.playground = PlaygroundService(
            self.store, self.provisioner, self.runner, config.idle_timeout_s,
            replica=config.replica or socket.gethostname(),
            claim_ttl_s=config.provision_timeout_s + 30)
        self.playground.on_provisioned = self.metrics.observe_provisioning
        self.registry = PluginRegistry(
            self.runner, builtin_plugins(config.enable_process_jobs, self.cluster,
                                         sqlflow_server=config.sqlflow_server,
                                         sqlflow_server_ca=config.sqlflow_server_ca))
        for plugin in discovered_plugins():
            try:
                self.registry.register(plugin)
            except ValueError as e:
                log.error("plugin %s not registered: %s", type(plugin).__name__, e)
        self.jobs = JobService(self.store, self.registry, self.runner, JobSettings(
            state_dir=config.state_dir, fetch_timeout_s=config.fetch_timeout_s,
            job_ttl_s=config.job_ttl_s, max_jobs_per_user=config.max_jobs_per_user,
            max_jobs=config.max_jobs, fetch_page_bytes=config.fetch_page_bytes,
            max_output_bytes=config.max_output_bytes,
            max_output_bytes_per_user=config.max_output_bytes_per_user,
            replica=config.replica or socket.gethostname(),
            replica_lease_s=config.replica_lease_s))
        self.jobs.data_source_of = self.playground.job_data_source
        self.reconciler = None
        if self.cluster is not None:
            from .reconcile import ClusterReconciler
            self.reconciler = ClusterReconciler(self.cluster, self.store, self.runner,
                                                config.reconcile_grace_s)
        self.app = make_app(config, self.playground, self.jobs, self.registry, self.metrics,
                            self.runner)
        self.http: Optional[HTTPServer] = None
        self.health: Optional[HTTPServer] = None
        self.metrics_http: Optional[HTTPServer] = None
        self.grpc_server = None  # the gRPC door (grpcdoor.py), behind its TLS relay
        self.grpc_relay = None
        self.grpc_port: Optional[int] = None
        self.sockets: List[socket.socket] = []
        self._periodic: List[PeriodicCallback] = []

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1]

    def ssl_context(self):
        if not self.config.tls_enabled:
            return None
        c = self.config
        return make_server_context(c.ca_crt, c.server_crt, c.server_key, c.crl,
                                   session_tickets=c.tls_session_tickets)

    async def start(self) -> None:
        await self.provisioner.check()
        if self.cluster is not None:
            from kubernetes.client.rest import ApiException
            from .k8s.clients import api_message, cluster_failure
            try:
                await self.runner.run(self.cluster.start)
            except ApiException as e:
                raise cluster_failure(e, "list", "pods", self.cluster.namespace) or \
                    Unavailable(f"the Kubernetes API refused to list pods: {api_message(e)}") \
                    from None
            except Exception as e:
                raise Unavailable(f"cannot reach the Kubernetes API: {e}") from None
        await self.jobs.renew_lease()  # before anything: other replicas must see us alive
        await self.jobs.recover()
        rolled_back = await self.playground.recover()
        if rolled_back:
            log.warning("rolled back %d provisioning(s) cut short by this replica's last stop",
                        rolled_back)
        await self._reconcile()
        # Unbuffered request bodies are capped by the handlers; this only bounds headers.
        # Timeouts, the connection cap and JSON answers to refused requests: connections.py.
        c = self.config
        max_connections = connection_cap(c.max_connections, raise_fd_limit(),
                                         fd_reserve(c.executor_threads, c.max_jobs))
        self.http = GatewayHTTPServer(
            self.app, ssl_options=self.ssl_context(), max_buffer_size=2 << 20,
            max_body_size=DISCARD_LIMIT_BYTES, body_timeout=c.body_timeout_s or None,
            handshake_timeout_s=c.handshake_timeout_s, header_timeout_s=c.header_timeout_s,
            idle_timeout_s=c.idle_connection_timeout_s, max_connections=max_connections)
        self.sockets = tornado.netutil.bind_sockets(self.config.port, self.config.host or None)
        self.http.add_sockets(self.sockets)
        if c.grpc_port:
            await self._open_grpc_door(max_connections)
        if self.config.health_port:
            self.health = HTTPServer(make_health_app({
                "store": lambda: self.runner.run(self.store.ping),
                "provisioner": self.provisioner.check}))
            self.health.listen(self.config.health_port, self.config.host or None)
        if self.config.metrics_port:
            self.metrics_http = HTTPServer(make_metrics_app(self.metrics, self.runner))
            self.metrics_http.listen(self.config.metrics_port, self.config.host or None)
        self._periodic = [
            PeriodicCallback(self._flush, self.config.heartbeat_flush_s * 1000),
            PeriodicCallback(self._reap, self.config.reap_interval_s * 1000),
            PeriodicCallback(self._ship, SHIP_INTERVAL_S * 1000),
            PeriodicCallback(self._keep_alive, RENEW_INTERVAL_S * 1000),
        ]
        for p in self._periodic:
            p.start()
        scheme = "https" if self.config.tls_enabled else "http"
        log.info("serving %s on %s:%d (provisioner %s)", scheme, self.config.host or "*",
                 self.port, self.provisioner.name)

    async def _open_grpc_door(self, max_connections: int) -> None:
        """SQLFlow's Run/Fetch on ``--grpc_port``: with TLS, through the relay that asks
        for an optional client certificate (tlsrelay.py) to a loopback gRPC server."""
        from .grpcdoor import SQLFlowDoor, start_door
        from .identity import identity_from_cert
        from .tlsrelay import TlsRelay
        c = self.config
        door = SQLFlowDoor(self.jobs, self.store, self.runner, self.metrics)
        if not c.tls_enabled:
            self.grpc_server, self.grpc_port = await start_door(
                door, f"{c.host or '[::]'}:{c.grpc_port}")
            return
        self.grpc_server, inner_port = await start_door(door, "127.0.0.1:0")
        self.grpc_inner_port = inner_port
        self.grpc_relay = door.relay = TlsRelay(
            lambda: make_grpc_context(c.ca_crt, c.server_crt, c.server_key, c.crl),
            inner_port, lambda cert: identity_from_cert(cert, c.frontend_certs),
            handshake_timeout_s=c.handshake_timeout_s,
            idle_timeout_s=c.idle_connection_timeout_s, max_connections=max_connections)
        try:
            self.grpc_port = await self.grpc_relay.start(c.host, c.grpc_port)
        except OSError as e:
            await self.grpc_server.stop(None)  # not left for the loop's close to find
            raise OSError(f"--grpc_port {c.grpc_port}: {e.strerror or e}") from None
        log.info("serving gRPC (SQLFlow Run/Fetch) on %s:%d", c.host or "*", self.grpc_port)

    def reload_tls(self) -> None:
        """Re-read certificates and the CRL; new connections use them, open ones keep theirs.

        Tornado wraps each accepted socket with ``HTTPServer.ssl_options``, so swapping
        that attribute is the whole reload.
        """
        if self.http is None or not self.config.tls_enabled:
            return
        try:
            self.http.ssl_options = self.ssl_context()
            if self.grpc_relay is not None:
                self.grpc_relay.reload()
        except (OSError, ValueError) as e:
            log.error("TLS reload failed, keeping the previous certificates and CRL: %s", e)
            return
        log.info("reloaded certificates and CRL")

    async def _flush(self) -> None:
        try:
            await self.playground.flush_heartbeats()
            await self.jobs.flush_fetches()
        except Exception:
            log.exception("writing heart beats to the store failed; will retry")

    async def _ship(self) -> None:
        try:
            await self.jobs.ship()
        except Exception:
            log.exception("shipping job output to the store failed; will retry")

    async def _keep_alive(self) -> None:
        """Renew this replica's lease, then end the jobs of replicas whose lease ran out."""
        try:
            await self.jobs.renew_lease()
            ended = await self.jobs.end_lost_jobs()
        except Exception:
            log.exception("renewing this replica's lease failed; will retry")
            return
        if ended:
            self.metrics.count_reaper_actions("ended_lost_replica_job", ended)

    async def _reap(self) -> None:
        try:
            released = await self.playground.reap_idle()
        except Exception:
            log.exception("idle reaper failed; will retry")
            return
        if released:
            log.info("idle reaper released %d database(s)", len(released))
            self.metrics.count_reaper_actions("released_user", len(released))
        try:
            for action, n in (await self.jobs.reap()).items():
                self.metrics.count_reaper_actions(action, n)
        except Exception:
            log.exception("job reaper failed; will retry")
        await self._reconcile()

    async def _reconcile(self) -> None:
        if self.reconciler is None:
            return
        try:
            deleted = await self.reconciler.run()
        except Exception:
            log.exception("reconciling the cluster failed; will retry")
            return
        if deleted:
            log.info("reconcile deleted %d orphaned object(s)", deleted)
            self.metrics.count_reaper_actions("reconciled_orphan", deleted)

    async def stop(self) -> None:
        """Stop accepting, close connections, save buffered heart beats, free resources."""
        for p in self._periodic:
            p.stop()
        for plain in (self.health, self.metrics_http):
            if plain is not None:
                plain.stop()
        if self.http is not None:
            self.http.stop()
        if self.grpc_relay is not None:
            await self.grpc_relay.stop()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace=1.0)
        await self.jobs.close()
        if self.http is not None:
            try:
                await tornado.gen.with_timeout(datetime.timedelta(seconds=5),
                                               self.http.close_all_connections())
            except tornado.gen.TimeoutError:
                log.warning("some connections did not close within 5s")
        await self._flush()
        self.provisioner.close()
        if self.cluster is not None:
            self.cluster.stop()
        self.store.close()
        self.runner.shutdown()
