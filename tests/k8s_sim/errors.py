"""API errors as the real API server renders them: ``Status`` objects.

Mirrors ``k8s.io/apimachinery/pkg/api/errors``: the reason, code, message wording and
``details`` (``name``, ``group``, ``kind`` = the resource's plural for NotFound and
AlreadyExists, the Kind for Invalid) that clients such as the official Python client turn
into ``ApiException(status=code)``.
"""
from typing import Any, Dict, List, Optional


class ApiError(Exception):
    """An error the simulator answers with a ``Status`` object and HTTP ``code``."""

    def __init__(self, code: int, reason: str, message: str,
                 details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                               "status": "Failure", "message": self.message,
                               "reason": self.reason, "code": self.code}
        if self.details is not None:
            doc["details"] = self.details
        return doc


def _details(rt: Any, name: str, kind: Optional[str] = None) -> Dict[str, Any]:
    details = {"name": name, "kind": kind or rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details


def _resource(rt: Any) -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def not_found(rt: Any, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_resource(rt)} "{name}" not found', _details(rt, name))


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def already_exists(rt: Any, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_resource(rt)} "{name}" already exists',
                    _details(rt, name))


def conflict(rt: Any, name: str) -> ApiError:
    return ApiError(409, "Conflict",
                    f'Operation cannot be fulfilled on {_resource(rt)} "{name}": the object '
                    "has been modified; please apply your changes to the latest version "
                    "and try again", _details(rt, name))


def invalid(rt: Any, name: str, causes: List[Dict[str, str]]) -> ApiError:
    """422 Invalid; each cause is ``{"reason", "message", "field"}`` like the real one."""
    text = ", ".join(f"{c['field']}: {c['message']}" if c.get("field") else c["message"]
                     for c in causes)
    if len(causes) > 1:
        text = f"[{text}]"
    details = _details(rt, name, rt.kind)
    details["causes"] = causes
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {text}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media "
                    f"types include: application/json-patch+json, application/merge-patch"
                    f"+json, application/apply-patch+yaml (got {content_type})")


def expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def status_success(rt: Any, obj: Dict[str, Any]) -> Dict[str, Any]:
    """What DELETE answers for kinds that do not return the deleted object."""
    meta = obj["metadata"]
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {**_details(rt, meta["name"]), "uid": meta["uid"]}}
