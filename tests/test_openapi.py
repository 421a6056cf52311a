"""GET /api/openapi.json: a valid OpenAPI document naming exactly the routes the app serves,
whose schemas the real answers fit."""
import inspect
import re

import pytest
import tornado.web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import fetch_until_eof
from sqlflow_playground.handlers import all_handlers

GROUP = re.compile(r"\((?:[^()\\]|\\.)*\)")  # one capture group of a route regex
METHODS = ("get", "post", "put", "delete", "patch")


def served_operations():
    """(OpenAPI path template, method) of every route in the app's table: each capture group
    becomes {name}, named after the argument the handler method receives it as."""
    served = set()
    for pattern, handler in all_handlers():
        for method in METHODS:
            implementation = getattr(handler, method)
            if implementation is getattr(tornado.web.RequestHandler, method):
                continue
            names = list(inspect.signature(implementation).parameters)[1:]
            groups = GROUP.findall(pattern)
            assert len(groups) == len(names), (pattern, handler, method)
            path = pattern
            for group, name in zip(groups, names):
                path = path.replace(group, "{%s}" % name, 1)
            served.add((path.rstrip("$"), method))
    return served


@pytest.fixture
def spec(fetch_as):
    resp = fetch_as("alice")("GET", "/api/openapi.json")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    return resp.body


def test_the_document_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert spec["security"] == [{"mutualTLS": []}]


def test_every_served_route_is_documented_and_nothing_else(spec):
    documented = {(path, method) for path, item in spec["paths"].items()
                  for method in item if method in METHODS}
    served = served_operations()
    assert ("/api/jobs/{token}", "delete") in served and ("/metrics", "get") in served
    assert served - documented == set(), "served but not in the OpenAPI document"
    assert documented - served == set(), "in the OpenAPI document but not served"


def test_parameters_bodies_and_errors_are_described(spec):
    paths = spec["paths"]
    for path, item in paths.items():
        for method, operation in item.items():
            declared = {(p["in"], p["name"]) for p in operation.get("parameters", ())}
            assert {("path", n) for n in re.findall(r"{(\w+)}", path)} <= declared, path
            assert {"200", "201"} & set(operation["responses"]), (path, method)
            assert "405" in operation["responses"]
            if method == "post":
                assert "requestBody" in operation and "413" in operation["responses"], path
    query = lambda path, method: {p["name"] for p in paths[path][method]["parameters"]  # noqa
                                  if p["in"] == "query"}
    assert query("/api/heart_beat", "get") == {"user_id"}
    assert query("/api/jobs", "get") == {"user_id", "status"}
    assert query("/api/jobs/{token}", "get") == {"since", "wait"}
    schemas = spec["components"]["schemas"]
    assert set(schemas["UserRequest"]["properties"]) == {"user_id"}
    assert set(schemas["JobRequest"]["required"]) == {"task_type", "spec"}
    assert set(paths["/api/jobs"]["post"]["responses"]) >= {
        "201", "400", "403", "404", "409", "413", "422", "429", "503"}
    responses = spec["components"]["responses"]
    assert {r["content"]["application/json"]["schema"]["$ref"] for r in responses.values()} \
        == {"#/components/schemas/Error"}
    assert len(responses) == 9  # 400 403 404 405 409 413 422 429 503


def conforms(spec, path, method, resp):
    """The response's body fits what the document promises for that status."""
    documented = spec["paths"][path][method]["responses"][str(resp.status)]
    if "$ref" in documented:
        documented = spec["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    schema = documented["content"]["application/json"]["schema"]
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    validator = Draft202012Validator(
        {"$ref": "urn:api" + schema["$ref"]} if "$ref" in schema else schema,
        registry=Registry().with_resource("urn:api", resource))
    errors = list(validator.iter_errors(resp.body))
    assert not errors, (path, method, resp.status, [e.message for e in errors])


def test_real_answers_fit_the_document(spec, fetch_as):
    alice, front = fetch_as("alice"), fetch_as("front")
    calls = [
        ("/api/create_db", "post", alice("POST", "/api/create_db", {"user_id": "alice"})),
        ("/api/create_db", "post", alice("POST", "/api/create_db", b"{oops")),
        # 202 while provisioning, or 200 if already done: both are documented
        ("/api/create_db", "post", front("POST", "/api/create_db",
                                         {"user_id": "zoe", "wait": 0})),
        ("/api/heart_beat", "get", alice("GET", "/api/heart_beat")),
        ("/api/users/{user_id}", "get", alice("GET", "/api/users/alice")),
        ("/api/users/{user_id}", "get", alice("GET", "/api/users/bob")),
        ("/api/users", "get", front("GET", "/api/users")),
        ("/plugins/v1", "get", alice("GET", "/plugins/v1")),
        ("/api/jobs", "post", alice("POST", "/api/jobs", {"task_type": "nope", "spec": {}})),
        ("/metrics", "get", alice("GET", "/metrics")),
        ("/api/create_db", "post", alice("DELETE", "/api/create_db")),
    ]
    submitted = alice("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1 AS a"}})
    calls.append(("/api/jobs", "post", submitted))
    token = submitted.body["token"]
    fetch_until_eof(alice, token)
    calls += [
        ("/api/jobs/{token}", "get", alice("GET", f"/api/jobs/{token}")),
        ("/api/jobs/{token}", "delete", alice("DELETE", f"/api/jobs/{token}")),
        ("/api/jobs", "get", alice("GET", "/api/jobs?status=SUCCEEDED")),
        ("/plugins/v1/{task_type}/{version}/{job_id}", "get",
         alice("GET", f"/plugins/v1/sql/v1/{token}")),
        ("/api/delete_db", "post", alice("POST", "/api/delete_db", {})),
    ]
    statuses = {resp.status for _, _, resp in calls}
    assert statuses >= {200, 201, 400, 403, 404, 405}
    for path, method, resp in calls:
        conforms(spec, path, method, resp)
