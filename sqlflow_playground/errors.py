"""Domain errors raised by services; the base handler maps each to an HTTP status."""


class PlaygroundError(Exception):
    """Base of every error a client may see; ``code`` is the machine-readable name."""

    status = 500
    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(PlaygroundError):
    """The request is malformed or a value is invalid."""

    status, code = 400, "bad_request"


class Forbidden(PlaygroundError):
    """The caller may not act on this resource."""

    status, code = 403, "forbidden"


class NotFound(PlaygroundError):
    """No such resource, or not one the caller may see."""

    status, code = 404, "not_found"


class Conflict(PlaygroundError):
    """The resource is not in a state that allows this operation."""

    status, code = 409, "conflict"


class PayloadTooLarge(PlaygroundError):
    """The request body exceeds the size limit."""

    status, code = 413, "payload_too_large"


class Unprocessable(PlaygroundError):
    """The body is well-formed but fails validation (e.g. a plugin's spec schema)."""

    status, code = 422, "unprocessable"


class QuotaExceeded(PlaygroundError):
    """The caller has used up a quota."""

    status, code = 429, "quota_exceeded"


class Unavailable(PlaygroundError):
    """A backend (database server, cluster) cannot be reached right now."""

    status, code = 503, "unavailable"


class LogTooDense(PlaygroundError):
    """A pod printed more within one second than one read of its log may hold, so its log
    cannot be paged past that second (``k8s.logs.read_page``). Not the caller's fault, and
    no retry helps."""

    status, code = 500, "log_too_dense"
