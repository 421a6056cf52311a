"""Plain-HTTP probes for Kubernetes on ``--health_port``: no TLS, no identity, no data."""
import json

import tornado.web


class HealthzHandler(tornado.web.RequestHandler):
    """The process is alive and its IOLoop answers."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish('{"status": "ok"}')


class ReadyzHandler(tornado.web.RequestHandler):
    """The store and the provisioner's backend can be reached: send traffic here."""

    async def get(self) -> None:
        checks = {}
        for name, check in self.settings["readiness_checks"].items():
            try:
                await check()
                checks[name] = "ok"
            except Exception as e:
                checks[name] = f"unavailable: {type(e).__name__}"
        ready = all(v == "ok" for v in checks.values())
        self.set_status(200 if ready else 503)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": "ok" if ready else "unavailable", "checks": checks}))


def make_health_app(readiness_checks) -> tornado.web.Application:
    return tornado.web.Application([(r"/healthz", HealthzHandler), (r"/readyz", ReadyzHandler)],
                                   readiness_checks=readiness_checks)
