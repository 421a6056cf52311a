"""The resource types the simulator serves, and the discovery documents describing them.

Mirrors the API server's discovery endpoints (``/version``, ``/api``, ``/apis``,
``/api/v1``, ``/apis/{group}/{version}``) in their legacy, unaggregated JSON form: kubectl
asks for aggregated discovery first and falls back to these when the answer is plain JSON.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

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

RESOURCE_TYPES: Dict[Tuple[str, str, str], ResourceType] = {
    rt.key: rt for rt in (PODS, SERVICES, SECRETS, JOBS, PYTORCHJOBS)}


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
            if rt.builtin:
                entry["categories"] = ["all"]
            resources.append(entry)
            if rt is PODS:
                resources.append({"name": "pods/log", "singularName": "", "namespaced": True,
                                  "kind": "Pod", "verbs": ["get"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}
