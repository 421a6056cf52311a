"""The OpenAPI 3.1 document served at ``GET /api/openapi.json``.

Generated from the tables below (one line of facts per operation) and from the code's own
constants: the user id and token patterns, job statuses, and the domain errors of
``errors.py`` with their statuses and codes. ``tests/test_openapi.py`` checks that the
operations here are exactly the routes and methods the app serves.
"""
import re
from typing import Any, Dict, Iterable, Optional

from . import __version__, errors
from .handlers.jobs import TOKEN_PATTERN
from .handlers.plugins import NAME
from .identity import USER_ID_RE
from .jobs import MAX_WAIT_S
from .plugins.base import STATUSES
from .store import PROVISIONING, READY, RELEASING

Schema = Dict[str, Any]

# -- schema shorthands -------------------------------------------------------------
STR, NUM, BOOL = {"type": "string"}, {"type": "number"}, {"type": "boolean"}
ANY: Schema = {}
OBJ: Schema = {"type": "object"}


def obj(required: Iterable[str] = (), closed: bool = False, **props: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def pattern(regex: str) -> Schema:
    return {"type": "string", "pattern": "^" + regex.strip("^$()") + "$"}


USER_ID = {**pattern(USER_ID_RE.pattern), "description": "a user id; omitted: the caller's own"}
JOB_STATUS = {"type": "string", "enum": list(STATUSES)}
JOB_SUMMARY = dict(
    token=STR, user_id=STR, task_type=STR, version=STR, status=JOB_STATUS, message=STR,
    outputs=nullable(OBJ), created_at=NUM, started_at=nullable(NUM),
    finished_at=nullable(NUM), fetch_timeout_s=NUM)
USER_SUMMARY = dict(user_id=STR, provisioner=STR,
                    status={"type": "string", "enum": [PROVISIONING, READY, RELEASING]},
                    created_at=NUM, last_seen_at=NUM)
FETCH_TIMEOUT = {**NUM, "exclusiveMinimum": 0, "maximum": 604800,
                 "description": "cancel the job when not fetched for this long (at most 7 days)"}

SCHEMAS: Dict[str, Schema] = {
    "Error": obj(["error"], error=obj(["code", "message"], code=STR, message=STR)),
    "UserRequest": obj(closed=True, user_id=USER_ID),
    "CreateDBRequest": obj(closed=True, user_id=USER_ID, wait={
        "type": "number", "minimum": 0, "description": (
            "new clients: answer within this many seconds (at most 30), 202 while the "
            "database is still being provisioned; POST again to keep waiting. Without it "
            "the answer comes when the database is ready")}),
    "Provisioning": obj(["user_id", "status", "phase", "elapsed_s", "provision_timeout_s"],
                        user_id=STR, status={"const": "provisioning"},
                        phase={"type": ["string", "null"], "description": (
                            "what the backend is doing, when it can tell (kubernetes: "
                            "scheduling, pulling the image, starting MySQL)")},
                        elapsed_s=NUM, provision_timeout_s=NUM),
    "CreateDB": obj(["data_source", "user_id", "created", "idle_timeout_s"], data_source=STR,
                    user_id=STR, created=BOOL, idle_timeout_s=NUM),
    "HeartBeat": obj(["user_id", "status", "idle_timeout_s"], user_id=STR,
                     status={"enum": ["ok", "lost"], "description":
                             "lost: the database's pod died; call /api/create_db for a new one"},
                     message=STR, idle_timeout_s=NUM),
    "DeleteDB": obj(["user_id", "released"], user_id=STR, released=BOOL),
    "UserSummary": obj(USER_SUMMARY, **USER_SUMMARY),
    "User": obj([*USER_SUMMARY, "data_source", "idle_timeout_s", "jobs"], **USER_SUMMARY,
                data_source=STR, idle_timeout_s=NUM, jobs=array(ref("JobSummary"))),
    "UserList": obj(["users", "idle_timeout_s"], users=array(ref("UserSummary")),
                    idle_timeout_s=NUM),
    "JobRequest": obj(["task_type", "spec"], closed=True, user_id=USER_ID, task_type=STR,
                      version={**STR, "description": "default: the latest registered"},
                      spec={"description": "the task type's parameters (its spec_schema)"},
                      fetch_timeout_s=FETCH_TIMEOUT),
    "JobSubmitted": obj(["token", "status"], token=STR, status=JOB_STATUS),
    "JobSummary": obj(JOB_SUMMARY, **JOB_SUMMARY),
    "StreamItem": {"type": "object", "minProperties": 1, "properties": {
        "message": STR, "head": array(STR), "row": array(ANY), "eoe": {"const": True}}},
    "JobFetch": obj([*JOB_SUMMARY, "responses", "next", "eof"], **JOB_SUMMARY,
                    responses=array(ref("StreamItem")),
                    next={**STR, "description": "the cursor to pass as `since` next"},
                    eof=BOOL),
    "JobList": obj(["jobs"], jobs=array(ref("JobSummary"))),
    "PluginJobRequest": obj(["spec"], closed=True, user_id=USER_ID, spec=ANY,
                            fetch_timeout_s=FETCH_TIMEOUT),
    "PluginJobCreated": obj(["job_id", "job_state"], job_id=STR, job_state=JOB_STATUS),
    "PluginJobState": obj(["job_id", "job_state", "message", "outputs", "log_links"],
                          job_id=STR, job_state=JOB_STATUS, message=STR, outputs=OBJ,
                          log_links=array(STR)),
    "PluginList": obj(["plugins"], plugins=array(obj(
        ["task_type", "version", "description", "spec_schema", "needs_database"],
        task_type=STR, version=STR, description=STR, spec_schema=OBJ, needs_database=BOOL))),
}

PATH_PARAMS: Dict[str, Schema] = {
    "user_id": USER_ID, "token": pattern(TOKEN_PATTERN), "job_id": pattern(TOKEN_PATTERN),
    "task_type": pattern(NAME), "version": pattern(NAME)}
QUERY_PARAMS: Dict[str, Schema] = {
    "user_id": USER_ID,
    "status": {**JOB_STATUS, "description": "only jobs in this status"},
    "since": {**STR, "description": "the `next` cursor of the previous fetch"},
    "wait": {**NUM, "minimum": 0, "maximum": MAX_WAIT_S, "default": 0,
             "description": "long-poll: hold the request until there is news, at most this"},
}

ERRORS = {cls.status: cls for cls in vars(errors).values()
          if isinstance(cls, type) and issubclass(cls, errors.PlaygroundError)
          and cls.__module__ == errors.__name__ and cls.status != 500}
METHOD_NOT_ALLOWED = 405


def op(summary: str, ok: Optional[str] = None, errors: Iterable[int] = (), body: Optional[str] = None,
       query: Iterable[str] = (), status: int = 200, tag: str = "jobs",
       also: Optional[Dict[int, str]] = None) -> Dict[str, Any]:
    """``also``: other successful answers, status -> schema."""
    return dict(summary=summary, ok=ok, errors=tuple(errors), body=body, query=tuple(query),
                status=status, tag=tag, also=dict(also or {}))


OPERATIONS = {
    ("/api/create_db", "post"): op(
        "Create the user's database, or return the existing one (idempotent)", "CreateDB",
        (400, 403, 413, 503), body="CreateDBRequest", tag="databases",
        also={202: "Provisioning"}),
    ("/api/heart_beat", "get"): op(
        "Record that the user is alive", "HeartBeat", (400, 403), query=["user_id"],
        tag="databases"),
    ("/api/delete_db", "post"): op(
        "Release the user's database now", "DeleteDB", (400, 403, 413, 503),
        body="UserRequest", tag="databases"),
    ("/api/users", "get"): op("All users (frontend certificates only)", "UserList", (403,),
                              tag="users"),
    ("/api/users/{user_id}", "get"): op(
        "One user's database and jobs", "User", (400, 403, 404, 503), tag="users"),
    ("/api/jobs", "post"): op(
        "Submit a job; returns its token at once", "JobSubmitted",
        (400, 403, 404, 409, 413, 422, 429, 503), body="JobRequest", status=201),
    ("/api/jobs", "get"): op(
        "List jobs: your own, or (frontend) anyone's", "JobList", (400, 403),
        query=["user_id", "status"]),
    ("/api/jobs/{token}", "get"): op(
        "Fetch the job's status and the output after `since`", "JobFetch", (400, 404, 503),
        query=["since", "wait"]),
    ("/api/jobs/{token}", "delete"): op("Cancel the job (idempotent)", "JobSummary",
                                        (404, 503)),
    ("/api/jobs/{token}/output", "get"): op(
        "Download the job's output file as it is (process: output.log; sql: its JSON "
        "lines): all of it, or from a `Range: bytes=N-` or `bytes=N-M` header (206). "
        "Another user's job is 404; a task type without an output file is 409",
        errors=(400, 404, 409, 503), also={206: None, 416: "Error"}),
    ("/plugins/v1", "get"): op("Registered task types with their spec schemas", "PluginList",
                               tag="plugins"),
    ("/plugins/v1/{task_type}/{version}", "post"): op(
        "Create a job of this task type (Flyte-style)", "PluginJobCreated",
        (400, 403, 404, 409, 413, 422, 429, 503), body="PluginJobRequest", status=201,
        tag="plugins"),
    ("/plugins/v1/{task_type}/{version}/{job_id}", "get"): op(
        "The job's state", "PluginJobState", (404, 503), tag="plugins"),
    ("/plugins/v1/{task_type}/{version}/{job_id}", "delete"): op(
        "Cancel the job", "PluginJobState", (404, 503), tag="plugins"),
    ("/api/openapi.json", "get"): op("This document", tag="meta"),
    ("/metrics", "get"): op("Prometheus metrics (frontend certificates only)", errors=(403,),
                            tag="meta"),
}
RAW_RESPONSES = {
    "/api/openapi.json": {"application/json": {"schema": OBJ}},
    "/metrics": {"text/plain; version=0.0.4": {"schema": STR}},
    "/api/jobs/{token}/output": {"application/octet-stream": {
        "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}},
}


def error_responses() -> Dict[str, Any]:
    found = {status: (cls.__name__, cls.code, cls.__doc__) for status, cls in ERRORS.items()}
    found[METHOD_NOT_ALLOWED] = ("MethodNotAllowed", "method_not_allowed",
                                 "The path does not answer this method.")
    return {name: {"description": f"{doc.strip()} (code `{code}`)",
                   "content": {"application/json": {"schema": ref("Error")}}}
            for _, (name, code, doc) in sorted(found.items())}


def response_name(status: int) -> str:
    return ERRORS[status].__name__ if status in ERRORS else "MethodNotAllowed"


def operation(path: str, method: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True, "schema": PATH_PARAMS[name]}
              for name in re.findall(r"{(\w+)}", path)]
    params += [{"name": name, "in": "query", "required": False, "schema": QUERY_PARAMS[name]}
               for name in spec["query"]]
    content = RAW_RESPONSES.get(path) or {"application/json": {"schema": ref(spec["ok"])}}
    responses: Dict[str, Any] = {str(spec["status"]): {"description": "OK", "content": content}}
    for status, schema in spec["also"].items():  # None: the path's own raw content
        responses[str(status)] = {"description": schema or "Partial content", "content": (
            RAW_RESPONSES[path] if schema is None else
            {"application/json": {"schema": ref(schema)}})}
    for status in sorted({*spec["errors"], METHOD_NOT_ALLOWED}):
        responses[str(status)] = {"$ref": f"#/components/responses/{response_name(status)}"}
    responses["default"] = {"description": "any other error, e.g. 500",
                            "content": {"application/json": {"schema": ref("Error")}}}
    result = {"operationId": f"{method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
              "summary": spec["summary"], "tags": [spec["tag"]], "responses": responses}
    if params:
        result["parameters"] = params
    if spec["body"]:
        required = bool(SCHEMAS[spec["body"]].get("required"))  # else an empty body is {}
        result["requestBody"] = {"required": required, "content": {
            "application/json": {"schema": ref(spec["body"])}}}
    return result


def build_spec() -> Dict[str, Any]:
    paths: Dict[str, Dict[str, Any]] = {}
    for (path, method), spec in OPERATIONS.items():
        paths.setdefault(path, {})[method] = operation(path, method, spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": "sqlflow-playground", "version": __version__, "description": (
            "Private databases and asynchronous jobs for SQLFlow notebook users. Bodies are "
            "JSON (at most 1 MiB); every error is the `Error` object.")},
        "security": [{"mutualTLS": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": error_responses(),
            "securitySchemes": {"mutualTLS": {"type": "mutualTLS", "description": (
                "A client certificate signed by the server's CA. Its CN is the identity; it "
                "may act for that user_id only, unless it is a frontend certificate "
                "(OU=frontend or --frontend_certs), which may act for anyone.")}},
        },
    }
