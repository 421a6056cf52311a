"""Prometheus metrics of one Gateway, in a registry of its own (never the process-global
one, so that several gateways in one process, as in the tests, stay apart).

* ``sqlflow_playground_requests_total{route,method,status}`` and
  ``sqlflow_playground_request_seconds{route}``: counted as each request finishes; ``route``
  is the route template (``/api/jobs/{token}``), ``unmatched`` for unknown paths.
* ``sqlflow_playground_jobs{task_type,status}`` and ``sqlflow_playground_active_users``
  (users holding a database): gauges read from the store at scrape time, so they are right
  after a restart and include the jobs of every replica sharing the store. Every replica
  reports the same values: aggregate them with ``max``, not ``sum``. Finished jobs count
  until they are purged (``--job_ttl_s``).
* ``sqlflow_playground_provision_seconds``: each successful provisioning of a user's
  database by this replica; ``sqlflow_playground_provision_failures_total``: the failed ones.
* ``sqlflow_playground_reaper_actions_total{action}``: what this replica's reapers did.
"""
import logging
from typing import Dict, Iterator, Tuple

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from .store import READY, Store, jobs, users

log = logging.getLogger(__name__)

PREFIX = "sqlflow_playground_"
REAPER_ACTIONS = ("released_user", "cancelled_job", "purged_job", "removed_orphan_job_dir",
                  "reconciled_orphan")
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS"))
REQUEST_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
PROVISION_BUCKETS = (.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class StoreCollector:
    """Jobs by task type and status, and active users, counted in the store per scrape."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            with self.store.engine.connect() as conn:
                job_counts = conn.execute(
                    sa.select(jobs.c.task_type, jobs.c.status, sa.func.count())
                    .group_by(jobs.c.task_type, jobs.c.status)).all()
                active = conn.execute(sa.select(sa.func.count()).select_from(users)
                                      .where(users.c.status == READY)).scalar_one()
        except Exception as e:  # a scrape must not fail because the store is down
            log.warning("metrics: cannot read the store: %s", type(e).__name__)
            return
        family = GaugeMetricFamily(PREFIX + "jobs", "Jobs in the store by task type and status",
                                   labels=("task_type", "status"))
        for task_type, status, count in job_counts:
            family.add_metric((task_type, status), count)
        yield family
        yield GaugeMetricFamily(PREFIX + "active_users", "Users holding a database",
                                value=active)


class Metrics:
    """The Gateway's metrics; ``render()`` is the scrape (blocking: it reads the store)."""

    def __init__(self, store: Store):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(PREFIX + "requests", "HTTP requests by route template, "
                                "method and status", ("route", "method", "status"), registry=r)
        self.request_seconds = Histogram(PREFIX + "request_seconds", "HTTP request latency by "
                                         "route template", ("route",), registry=r,
                                         buckets=REQUEST_BUCKETS)
        self.provision_seconds = Histogram(PREFIX + "provision_seconds", "Time to provision "
                                           "a user's database", registry=r,
                                           buckets=PROVISION_BUCKETS)
        self.provision_failures = Counter(PREFIX + "provision_failures", "Provisionings of "
                                          "a user's database that failed", registry=r)
        self.reaper_actions = Counter(PREFIX + "reaper_actions", "What the reapers did",
                                      ("action",), registry=r)
        self.grpc_requests = Counter(PREFIX + "grpc_requests", "gRPC calls of the SQLFlow "
                                     "door by method and status code", ("method", "code"),
                                     registry=r)
        self.grpc_seconds = Histogram(PREFIX + "grpc_request_seconds", "gRPC call latency "
                                      "by method", ("method",), registry=r,
                                      buckets=REQUEST_BUCKETS)
        for action in REAPER_ACTIONS:
            self.reaper_actions.labels(action)  # exported as 0 from the start
        r.register(StoreCollector(store))
        self._children: Dict[Tuple[str, str, int], tuple] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request. On the IOLoop, per request: two dict look-ups."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            label = method if method in KNOWN_METHODS else "other"  # bounded cardinality
            children = self._children[key] = (
                self.requests.labels(route, label, str(status)),
                self.request_seconds.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished call of the gRPC door (``code``: a grpc.StatusCode name)."""
        self.grpc_requests.labels(method, code).inc()
        self.grpc_seconds.labels(method).observe(seconds)

    def observe_provisioning(self, seconds: float, ok: bool) -> None:
        if ok:
            self.provision_seconds.observe(seconds)
        else:
            self.provision_failures.inc()

    def count_reaper_actions(self, action: str, n: int = 1) -> None:
        if n:
            self.reaper_actions.labels(action).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
