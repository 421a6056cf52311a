"""``GET /api/v1/namespaces/{ns}/pods/{name}/log``, answered as the kubelet would.

Mirrors the API server proxying to the kubelet: 400 with ``container "c" in pod "p" is
waiting to start: …`` before the container ran, 400 when a pod with several containers is
asked without ``container``; otherwise the first container's output filtered by
``sinceTime``/``sinceSeconds``/``tailLines``/``limitBytes``, optionally ``timestamps``, and
with ``follow=true`` streamed until the container ends or the client goes away (or, if the
simulator has a ``log_follow_timeout_s``, that long; the real API server sets none). Open
streams are kept in ``sim.log_streams`` so that tests can count and break them.
"""
import asyncio

import tornado.iostream

from . import logs
from .base import SimHandler
from .errors import bad_request
from .resources import PODS, authorize


class LogHandler(SimHandler):
    """``GET …/pods/{name}/log``: the first container's output, as the kubelet serves it."""

    async def get(self, namespace: str, name: str) -> None:
        self.count("get", "pods/log", name)
        authorize(self.sim, "get", "", "pods/log", namespace, name)
        pod = self.store.get(PODS, namespace, name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        container = self.get_query_argument("container", None)
        if container is None and len(names) > 1:
            raise bad_request(f"a container name must be specified for pod {name}, choose one "
                              f"of: [{' '.join(names)}]")
        container = container or names[0]
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        runtime = self.sim.kubelet.runtime(namespace, name)
        if runtime is None or not runtime.started:
            statuses = pod.get("status", {}).get("containerStatuses") or []
            waiting = (statuses[0]["state"].get("waiting") or {}) if statuses else {}
            reason = waiting.get("reason", "ContainerCreating")
            if reason in ("ImagePullBackOff", "ErrImagePull"):
                reason = "trying and failing to pull image"
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                              f"{reason}")
        log = runtime.log if container == names[0] else logs.ContainerLog()
        since = self.get_query_argument("sinceTime", None)
        since_ns = logs.parse_since_time(since) if since else None
        if self.get_query_argument("sinceSeconds", None):
            since_ns = int((self.sim.now() - int(self.get_query_argument("sinceSeconds"))) * 1e9)
        tail = self.get_query_argument("tailLines", None)
        limit = int(self.get_query_argument("limitBytes", 0) or 0) or None
        stamps = self.flag("timestamps")
        self.set_header("Content-Type", "text/plain")
        lines = log.select(since_ns, int(tail) if tail is not None else None)
        out = logs.render(lines, stamps)[:limit]
        if not self.flag("follow"):
            self.finish(out)
            return
        sent, position = len(out), len(log.lines)
        self.write(out)
        loop = asyncio.get_running_loop()
        timeout = self.sim.log_follow_timeout_s
        deadline = loop.time() + timeout if timeout else None
        self.interrupt = asyncio.Event()  # set by a client's leaving or by cut_log_streams
        self.sim.log_streams.add(self)
        try:
            await self.flush()
            while not (log.closed or self.interrupt.is_set()) \
                    and (deadline is None or loop.time() < deadline) \
                    and (limit is None or sent < limit):
                await log.wait(deadline - loop.time() if deadline else 30.0, self.interrupt)
                fresh = logs.render(log.select(since_ns, start=position), stamps)
                position = len(log.lines)
                fresh = fresh[:limit - sent] if limit else fresh
                sent += len(fresh)
                self.write(fresh)
                await self.flush()
        except tornado.iostream.StreamClosedError:
            return
        finally:
            self.sim.log_streams.discard(self)
        if self.request.connection.stream.closed():
            return
        self.finish()

    def on_connection_close(self) -> None:
        interrupt = getattr(self, "interrupt", None)
        if interrupt is not None:
            interrupt.set()

    def cut(self) -> None:
        """Break the stream as a failing network or API server would: the connection
        closes with no end-of-body, so the client sees a truncated response."""
        self.request.connection.stream.close()
        self.interrupt.set()
