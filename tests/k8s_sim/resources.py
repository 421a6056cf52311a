"""The resource types the simulator serves, and the discovery documents describing them.

Mirrors the API server's discovery endpoints (``/version``, ``/api``, ``/apis``,
``/api/v1``, ``/apis/{group}/{version}``) in their legacy, unaggregated JSON form: kubectl
asks for aggregated discovery first and falls back to these when the answer is plain JSON.
And its OpenAPI documents, abridged (``/openapi/v2`` as JSON, ``/openapi/v3`` and one
document per group-version): every path and operation of the served kinds, tagged with
``x-kubernetes-group-version-kind`` and accepting ``fieldValidation``, so ``kubectl apply``
validates on the server (the simulator validates strictly); schemas name their kind but
leave the fields to that server-side validation. Plus request authorization
(``authorize``): injected faults and, when the simulator enforces one, a Role's rules.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import ApiError

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One namespaced resource: where it lives, what it is called, how it is checked."""

    group: str
    version: str
    plural: str
    kind: str
    short_names: Tuple[str, ...] = ()
    builtin: bool = True          # validated against the real schemas
    name_rule: str = "subdomain"  # or "dns1035" (services)
    # batch/v1 Jobs orphan their pods unless told otherwise, for backwards compatibility.
    default_propagation: str = "Background"
    returns_deleted_object: bool = True  # DELETE answers the object, or a Status
    categories: bool = True       # in kubectl's "all" category (if builtin)
    field_selectors: Tuple[str, ...] = ("metadata.name", "metadata.namespace")

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy",
              "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP")

PODS = ResourceType("", "v1", "pods", "Pod", ("po",), field_selectors=POD_FIELDS)
SERVICES = ResourceType("", "v1", "services", "Service", ("svc",), name_rule="dns1035")
SECRETS = ResourceType("", "v1", "secrets", "Secret", returns_deleted_object=False,
                       field_selectors=("metadata.name", "metadata.namespace", "type"))
JOBS = ResourceType("batch", "v1", "jobs", "Job", default_propagation="Orphan")
PYTORCHJOBS = ResourceType("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", builtin=False)
EVENTS = ResourceType("", "v1", "events", "Event", ("ev",), categories=False,
                      field_selectors=("metadata.name", "metadata.namespace",
                                       "involvedObject.kind", "involvedObject.name",
                                       "involvedObject.uid", "reason", "type"))

RESOURCE_TYPES: Dict[Tuple[str, str, str], ResourceType] = {
    rt.key: rt for rt in (PODS, SERVICES, SECRETS, JOBS, PYTORCHJOBS, EVENTS)}
SUBRESOURCES = {"pods/log": PODS}
SERVICE_ACCOUNT = "system:serviceaccount:sqlflow-playground:sqlflow-playground"
FAULT_REASONS = {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests",
                 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


def group_of(resource: str) -> Optional[str]:
    """The API group of a plural (or ``plural/subresource``) the simulator serves."""
    rt = SUBRESOURCES.get(resource) or next(
        (t for t in RESOURCE_TYPES.values() if t.plural == resource), None)
    return None if rt is None else rt.group


def allows(rules: Iterable[Dict[str, Any]], verb: str, group: str, resource: str) -> bool:
    """Whether RBAC ``rules`` (a Role's, as in its YAML) grant ``verb`` on ``resource``."""
    def has(values: Any, value: str) -> bool:
        return "*" in (values or []) or value in (values or [])
    return any(has(r.get("apiGroups"), group) and has(r.get("resources"), resource)
               and has(r.get("verbs"), verb) for r in rules)


def authorize(sim: Any, verb: str, group: str, resource: str, namespace: Optional[str],
              name: Optional[str]) -> None:
    """What the API server's filters answer before the handler: an injected fault
    (``sim.faults[(verb, resource)] = 429``, or ``(verb, "*")``), else, when the simulator
    enforces a Role (``sim.rbac_rules``: its ``rules``), 403 for what it does not grant."""
    faults = getattr(sim, "faults", None) or {}
    code = faults.get((verb, resource)) or faults.get((verb, "*")) or faults.get(("*", "*"))
    if code:
        reason = FAULT_REASONS.get(code, "InternalError")
        raise ApiError(code, reason, f"{reason}: the simulator was told to refuse {verb} "
                       f"{resource}" + (" (rate limited)" if code == 429 else ""))
    rules = getattr(sim, "rbac_rules", None)
    if rules is None or allows(rules, verb, group, resource):
        return
    plural, _, _ = resource.partition("/")
    what = f'{plural}.{group}' if group else plural
    where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    if name:
        what += f' "{name}"'
    raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{SERVICE_ACCOUNT}" cannot '
                   f'{verb} resource "{resource}" in API group "{group}"{where}',
                   {"name": name or "", "group": group, "kind": plural})


def lookup(group: str, version: str, plural: str) -> Optional[ResourceType]:
    return RESOURCE_TYPES.get((group, version, plural))


def by_kind(api_version: str, kind: str) -> Optional[ResourceType]:
    for rt in RESOURCE_TYPES.values():
        if rt.api_version == api_version and rt.kind == kind:
            return rt
    return None


@dataclass
class Discovery:
    """Builds the discovery documents for one server address."""

    server_address: str
    git_version: str = "v1.30.0"
    types: List[ResourceType] = field(default_factory=lambda: list(RESOURCE_TYPES.values()))

    def version(self) -> Dict[str, Any]:
        major, minor = self.git_version.lstrip("v").split(".")[:2]
        return {"major": major, "minor": minor, "gitVersion": f"{self.git_version}-sim",
                "gitCommit": "0" * 40, "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z", "goVersion": "go1.22.0",
                "compiler": "gc", "platform": "linux/amd64"}

    def core_versions(self) -> Dict[str, Any]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": self.server_address}]}

    def _groups(self) -> Dict[str, List[str]]:
        groups: Dict[str, List[str]] = {}
        for rt in self.types:
            if rt.group and rt.version not in groups.setdefault(rt.group, []):
                groups[rt.group].append(rt.version)
        return groups

    @staticmethod
    def _group_doc(name: str, versions: List[str]) -> Dict[str, Any]:
        entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": entries, "preferredVersion": entries[0]}

    def group_list(self) -> Dict[str, Any]:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_doc(g, vs) for g, vs in self._groups().items()]}

    def group(self, name: str) -> Optional[Dict[str, Any]]:
        versions = self._groups().get(name)
        if not versions:
            return None
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(name, versions)}

    def resource_list(self, group: str, version: str) -> Optional[Dict[str, Any]]:
        types = [rt for rt in self.types if (rt.group, rt.version) == (group, version)]
        if not types:
            return None
        resources = []
        for rt in types:
            entry = {"name": rt.plural, "singularName": rt.singular, "namespaced": True,
                     "kind": rt.kind, "verbs": ALL_VERBS, "storageVersionHash": rt.kind}
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.builtin and rt.categories:
                entry["categories"] = ["all"]
            resources.append(entry)
            if rt is PODS:
                resources.append({"name": "pods/log", "singularName": "", "namespaced": True,
                                  "kind": "Pod", "verbs": ["get"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    # -- OpenAPI (abridged: paths, operations, kinds; the fields are checked server-side)
    def _paths(self, types: List[ResourceType]) -> Dict[str, Any]:
        paths: Dict[str, Any] = {}
        params = [{"name": p, "in": "query", "schema": {"type": "string"}, "type": "string"}
                  for p in ("dryRun", "fieldManager", "fieldValidation")]
        for rt in types:
            prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
            gvk = {"x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version,
                                                      "kind": rt.kind}}

            def op(verb: str, action: str) -> Dict[str, Any]:
                return {"operationId": f"{verb}{rt.kind}", "parameters": params,
                        "x-kubernetes-action": action, **gvk,
                        "responses": {"200": {"description": "OK"}}}
            base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}"
            paths[base] = {"get": op("list", "list"), "post": op("create", "post")}
            paths[base + "/{name}"] = {"get": op("read", "get"), "patch": op("patch", "patch"),
                                       "put": op("replace", "put"),
                                       "delete": op("delete", "delete")}
        return paths

    @staticmethod
    def _schemas(types: List[ResourceType]) -> Dict[str, Any]:
        def name(rt: ResourceType) -> str:
            group = ".".join(reversed(rt.group.split("."))) if "." in rt.group else \
                f"io.k8s.api.{rt.group or 'core'}"
            return f"{group}.{rt.version}.{rt.kind}"
        return {name(rt): {"type": "object", "description": f"A {rt.kind}.",
                           "x-kubernetes-preserve-unknown-fields": True,
                           "x-kubernetes-group-version-kind": [
                               {"group": rt.group, "version": rt.version, "kind": rt.kind}]}
                for rt in types}

    def openapi_v2(self) -> Dict[str, Any]:
        return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": self.git_version},
                "paths": self._paths(self.types), "definitions": self._schemas(self.types)}

    def openapi_v3_root(self) -> Dict[str, Any]:
        gvs = sorted({(rt.group, rt.version) for rt in self.types})
        return {"paths": {(f"apis/{g}/{v}" if g else f"api/{v}"): {
            "serverRelativeURL": f"/openapi/v3/{'apis/' + g if g else 'api'}/{v}"
                                 f"?hash={self.git_version}"} for g, v in gvs}}

    def openapi_v3(self, group: str, version: str) -> Optional[Dict[str, Any]]:
        types = [rt for rt in self.types if (rt.group, rt.version) == (group, version)]
        if not types:
            return None
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": self.git_version},
                "paths": self._paths(types), "components": {"schemas": self._schemas(types)}}
