"""Routes about the service itself: its OpenAPI document and its Prometheus metrics."""
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from .base import APIHandler


class OpenAPIHandler(APIHandler):
    """Any authenticated client may read the API's description."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(self.settings["openapi"])


async def scrape(handler: tornado.web.RequestHandler) -> None:
    metrics = handler.settings["metrics"]
    body = await handler.settings["runner"].run(metrics.render)  # it reads the store
    handler.set_header("Content-Type", CONTENT_TYPE_LATEST)
    handler.finish(body)


class MetricsHandler(APIHandler):
    """Prometheus metrics, for frontend certificates only (403 for the others)."""

    async def get(self) -> None:
        self.identity.require_frontend()
        await scrape(self)


class PlainMetricsHandler(tornado.web.RequestHandler):
    """The same metrics on the plain-HTTP ``--metrics_port``, for an in-cluster scraper."""

    async def get(self) -> None:
        await scrape(self)


def make_metrics_app(metrics, runner) -> tornado.web.Application:
    return tornado.web.Application([(r"/metrics", PlainMetricsHandler)], metrics=metrics,
                                   runner=runner, log_function=lambda handler: None)


default_handlers = [
    (r"/api/openapi.json", OpenAPIHandler),
    (r"/metrics", MetricsHandler),
]
