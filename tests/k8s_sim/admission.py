"""What the API server does to a request body before it is stored: create and patch.

Mirrors the generic registry: on create the body's ``apiVersion``/``kind`` and namespace
must agree with the URL, ``generateName`` gets its random suffix, the object is validated
(``validation``) and defaulted (``defaults``). On PATCH the three patch types of the real
server are accepted (JSON patch; JSON merge patch; strategic merge patch, applied here as a
merge patch, and refused for custom resources with 415 as the real server does); a
``metadata.resourceVersion`` in the patch is a precondition (409 when stale); identity
fields and ``status`` cannot change through the main resource; a pod's spec is immutable
except images and ``activeDeadlineSeconds``, a Job's template and selector are immutable.
"""
import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

from .defaults import apply_defaults, generate_name
from .errors import ApiError, bad_request, invalid, unsupported_media
from .resources import ResourceType
from .validation import validate_object

Obj = Dict[str, Any]
# What a mesh's mutating webhook adds to a pod (Istio's, abridged): a proxy container after
# the pod's own, which runs until the pod is deleted and prints nothing the job wrote.
SIDECAR_ANNOTATION = "sidecar.istio.io/inject"
SIDECAR = {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.22.0",
           "args": ["proxy", "sidecar"], "resources": {"requests": {"cpu": "10m"}}}
IDENTITY = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
            "deletionGracePeriodSeconds", "generateName")


def prepare_create(rt: ResourceType, namespace: str, body: Any, taken: Callable[[str], bool],
                   schema_version: Optional[str],
                   allocate_ip: Callable[[], str]) -> Tuple[Obj, Callable[[Obj], None]]:
    """The validated body to store, and the defaulting to apply once it has a uid."""
    if not isinstance(body, dict):
        raise bad_request(f"the body of the request was not a {rt.kind} object")
    obj = copy.deepcopy(body)
    api_version = obj.setdefault("apiVersion", rt.api_version)
    kind = obj.setdefault("kind", rt.kind)
    if api_version != rt.api_version:
        raise bad_request(f"the API version in the data ({api_version}) does not match the "
                          f"expected API version ({rt.api_version})")
    if kind != rt.kind:
        raise bad_request(f"the kind in the data ({kind}) does not match the expected kind "
                          f"({rt.kind})")
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if meta.get("namespace", namespace) != namespace:
        raise bad_request("the namespace of the provided object does not match the namespace "
                          "sent on the request")
    meta["namespace"] = namespace
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = generate_name(meta["generateName"], taken)
    validate_object(rt, obj, schema_version)
    return obj, lambda stored: apply_defaults(rt.kind, stored, allocate_ip)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> List[str]:
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Obj, ops: Any) -> Obj:
    """RFC 6902 ``add``, ``remove``, ``replace`` and ``test``."""
    if not isinstance(ops, list):
        raise bad_request("the JSON patch must be a list of operations")
    for op in ops:
        *parents, last = _pointer(op.get("path", ""))
        node: Any = doc
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            index: Any = last
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
            if op.get("op") == "add" and isinstance(node, list):
                node.insert(index, op["value"])
            elif op.get("op") == "add":
                node[index] = op["value"]
            elif op.get("op") == "replace":
                node[index]  # must exist
                node[index] = op["value"]
            elif op.get("op") == "remove":
                del node[index]
            elif op.get("op") == "test":
                if node[index] != op["value"]:
                    raise ApiError(422, "Invalid",
                                   f"the test operation for path {op['path']} failed")
            else:
                raise bad_request(f"unsupported JSON patch operation {op.get('op')!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in "
                           f"our request: {op.get('op')} {op.get('path')}: {e}") from e
    return doc


def _immutable_causes(rt: ResourceType, old: Obj, new: Obj) -> List[Dict[str, str]]:
    if rt.kind == "Pod":
        def mutable_stripped(spec: Obj) -> Obj:
            spec = copy.deepcopy(spec)
            spec.pop("activeDeadlineSeconds", None)
            for c in spec.get("containers") or []:
                c.pop("image", None)
            return spec
        if mutable_stripped(old["spec"]) != mutable_stripped(new.get("spec") or {}):
            return [{"reason": "FieldValueForbidden", "field": "spec",
                     "message": "Forbidden: pod updates may not change fields other than "
                                "`spec.containers[*].image`, `spec.activeDeadlineSeconds`"}]
    if rt.kind == "Job":
        spec = new.get("spec") or {}
        return [{"reason": "FieldValueInvalid", "field": f"spec.{f}",
                 "message": "Invalid value: field is immutable"}
                for f in ("template", "selector") if old["spec"].get(f) != spec.get(f)]
    return []


def apply_patch(rt: ResourceType, current: Obj, content_type: str, body: Any,
                schema_version: Optional[str]) -> Tuple[Obj, Optional[str]]:
    """The patched object and the resourceVersion precondition the patch carried."""
    media = (content_type or "").split(";")[0].strip()
    if media == "application/json-patch+json":
        new = json_patch(copy.deepcopy(current), body)
    elif media == "application/merge-patch+json" or (
            media == "application/strategic-merge-patch+json" and rt.builtin):
        if not isinstance(body, dict):
            raise bad_request("a merge patch must be a JSON object")
        new = merge_patch(copy.deepcopy(current), body)
    else:
        raise unsupported_media(media)
    meta = new.setdefault("metadata", {})
    precondition = meta.get("resourceVersion")
    precondition = precondition if precondition != current["metadata"]["resourceVersion"] else None
    for key in IDENTITY:
        meta.pop(key, None)
        if key in current["metadata"]:
            meta[key] = current["metadata"][key]
    new["apiVersion"], new["kind"] = rt.api_version, rt.kind
    new.pop("status", None)
    causes = _immutable_causes(rt, current, new)
    if causes:
        raise invalid(rt, meta["name"], causes)
    validate_object(rt, new, schema_version)
    if "status" in current:
        new["status"] = copy.deepcopy(current["status"])
    return new, precondition or None


def wants_sidecar(sim: Any, pod: Obj) -> bool:
    """Injection is on for every pod (``sim.inject_sidecars``) or asked by the pod's label
    or annotation ``sidecar.istio.io/inject: "true"``, as Istio's webhook reads them."""
    meta = pod.get("metadata") or {}
    asked = {**(meta.get("annotations") or {}), **(meta.get("labels") or {})}
    if str(asked.get(SIDECAR_ANNOTATION, "")).lower() == "false":
        return False
    return bool(getattr(sim, "inject_sidecars", False)) or \
        str(asked.get(SIDECAR_ANNOTATION, "")).lower() == "true"


def install_webhooks(sim: Any) -> None:
    """A mutating webhook in front of storage: every pod created, through the API or by a
    controller (the Job controller writes the store directly), gets the sidecar if it
    wants one, before anyone (kubelet, watchers) sees it."""
    store, create = sim.store, sim.store.create

    def admitted_create(rt: ResourceType, namespace: str, obj: Obj, prepare: Any = None) -> Obj:
        if rt.kind == "Pod" and wants_sidecar(sim, obj):
            containers = (obj.get("spec") or {}).get("containers") or []
            if all(c.get("name") != SIDECAR["name"] for c in containers):
                obj = copy.deepcopy(obj)
                obj["spec"]["containers"] = containers + [copy.deepcopy(SIDECAR)]
        return create(rt, namespace, obj, prepare)
    store.create = admitted_create
