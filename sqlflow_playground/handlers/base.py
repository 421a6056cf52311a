"""What every API route shares: identity, JSON bodies with a size limit, JSON errors."""
import json
import logging
import ssl
from http import HTTPStatus
from typing import Any, Dict, Optional

import tornado.web

from ..accesslog import REQUEST_ID_HEADER, request_id_for
from ..errors import BadRequest, PayloadTooLarge, PlaygroundError
from ..identity import Identity, identity_from_cert

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
# JSON that no route needs and that costs the server: deeper nesting than any manifest
# has, numbers no setting means (1e15 s is 30 million years; 1e15 bytes a petabyte).
MAX_JSON_DEPTH = 64
MAX_JSON_MAGNITUDE = 1e15
# Bodies up to this size are read (and dropped) to answer 413 cleanly; larger ones make
# Tornado close the connection.
DISCARD_LIMIT_BYTES = 16 * MAX_BODY_BYTES
INSECURE_IDENTITY = Identity(name="anonymous", is_frontend=True)
UNMATCHED_ROUTE = "unmatched"  # the route of requests that no route took


@tornado.web.stream_request_body
class APIHandler(tornado.web.RequestHandler):
    """Base of every route: ``self.identity`` is the caller, ``json_body()`` the request.

    The body is streamed so an oversized one is refused with a JSON 413 from its
    Content-Length before it is read, and one without a length is cut off at the limit.
    """

    identity: Identity
    request_id: Optional[str] = None

    def set_default_headers(self) -> None:
        # Called again when an error clears the headers: the id is kept for the error too.
        if self.request_id is None:
            self.request_id = request_id_for(self.request.headers)
        self.set_header(REQUEST_ID_HEADER, self.request_id)

    @property
    def route(self) -> str:
        """The route template (``/api/jobs/{token}``) of this handler, for metrics and logs."""
        return self.settings.get("routes", {}).get(type(self), UNMATCHED_ROUTE)

    def on_finish(self) -> None:
        metrics = self.settings.get("metrics")
        if metrics is not None:
            metrics.observe_request(self.route, self.request.method, self.get_status(),
                                    self.request.request_time())

    def prepare(self) -> None:
        self._body = bytearray()
        self._body_too_large = False
        self.identity = self._resolve_identity()
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            # Read and drop it, then answer 413: a client still uploading when the server
            # hangs up would see a broken pipe instead of the answer. (The HTTPServer's
            # max_body_size cuts off anything beyond DISCARD_LIMIT_BYTES.)
            self._body_too_large = True

    def data_received(self, chunk: bytes) -> None:
        if self._body_too_large or self._finished:
            return
        self._body.extend(chunk)
        if len(self._body) > MAX_BODY_BYTES:
            self._body_too_large = True
            self._body = bytearray()

    def _resolve_identity(self) -> Identity:
        identity = connection_identity(self.request.connection, self.settings)
        if identity is None:  # unreachable with CERT_REQUIRED; kept as a second lock
            raise tornado.web.HTTPError(403, "a client certificate is required")
        return identity

    # -- bodies ----------------------------------------------------------------

    def json_body(self, allowed: tuple = ()) -> Dict[str, Any]:
        """The body as a JSON object (empty body -> {}); keys outside ``allowed`` are refused."""
        if self._body_too_large:
            raise PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
        if not self._body.strip():
            return {}
        body = parse_json(bytes(self._body))
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
        return body

    def compute_etag(self) -> None:
        return None  # API answers change with every call; hashing them is wasted work

    def query(self, name: str) -> Optional[str]:
        return self.get_query_argument(name, None)

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload, allow_nan=False))  # NaN is not JSON: fail, not lie

    # -- errors ----------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code, message = "internal", "Unhandled error"
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, PlaygroundError):
            status_code, code, message = exc.status, exc.code, exc.message
        elif isinstance(exc, tornado.web.HTTPError) or status_code < 500:
            code = HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
            message = (exc.log_message % exc.args if exc is not None and exc.log_message
                       else HTTPStatus(status_code).phrase)
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"error": {"code": code, "message": message}}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, (PlaygroundError, tornado.web.HTTPError)):
            return  # expected; the access log records the status
        super().log_exception(typ, value, tb)


def connection_identity(connection: Any, settings: Dict[str, Any]) -> Optional[Identity]:
    """The identity of the certificate a connection presented, parsed once per connection,
    not once per request; the anonymous frontend under ``--insecure``; None without one."""
    stream = getattr(connection, "stream", None)
    cached = getattr(stream, "sfp_identity", None)
    if cached is not None:
        return cached
    if settings.get("insecure"):
        return INSECURE_IDENTITY
    try:
        der = stream.socket.getpeercert(binary_form=True)
        if not der:
            return None
        frontend_names = settings.get("frontend_certs", ())
        key = (der, tuple(frontend_names))
        identity = _identity_by_cert.get(key)
        if identity is None:  # parse the certificate only the first time it is seen
            identity = identity_from_cert(stream.socket.getpeercert(), frontend_names)
            if len(_identity_by_cert) >= MAX_CACHED_IDENTITIES:
                _identity_by_cert.clear()
            _identity_by_cert[key] = identity
    except (AttributeError, ValueError, ssl.SSLError):  # not a TLS socket, or closed
        return None
    stream.sfp_identity = identity
    return identity


# A certificate's identity by its DER bytes: a user who connects again (a new connection per
# beat, say) costs a dictionary look-up, not a decode of the certificate. The handshake has
# verified the certificate (and checked the CRL) before this is asked; what is cached is
# only what its subject says, which cannot change for the same bytes.
MAX_CACHED_IDENTITIES = 4096
_identity_by_cert: Dict[Any, Identity] = {}


class _NonFinite(str):
    """What ``parse_json`` puts where the body said NaN or Infinity, to name the field."""


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN/Infinity (Python's json accepts them; JSON does not), no number
    beyond ``MAX_JSON_MAGNITUDE``, no nesting deeper than ``MAX_JSON_DEPTH``. Every refusal
    is a BadRequest naming the field, e.g. ``spec.env.A`` or ``fetch_timeout_s``."""
    try:
        body = json.loads(raw, parse_constant=_NonFinite)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    _check_json(body, "", 0)
    return body


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"request body is nested more than {MAX_JSON_DEPTH} levels deep"
                         + (f" (at {path})" if path else ""))
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, _NonFinite):
        raise BadRequest(f"{path or 'body'}: {str(value)} is not a number JSON allows")
    elif isinstance(value, (int, float)) and not isinstance(value, bool) \
            and abs(value) > MAX_JSON_MAGNITUDE:
        digits = len(str(abs(int(value)))) if isinstance(value, int) else 0
        shown = f"a {digits}-digit number" if digits > 20 else f"{value:g}"
        raise BadRequest(f"{path or 'body'}: {shown} is out of range "
                         f"(at most {MAX_JSON_MAGNITUDE:g} in magnitude)")


class NotFoundHandler(APIHandler):
    """Every unknown route, whatever the method."""

    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, "no route %s %s", self.request.method, self.request.path)
