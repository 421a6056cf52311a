"""Server-side defaulting on create, a subset of ``pkg/apis/*/v1/defaults.go``.

What a client reads back after creating an object and may depend on: a pod's
``restartPolicy: Always`` and ``status.phase: Pending``; a Job's ``backoffLimit: 6``,
``completions``/``parallelism: 1``, generated ``selector`` and the ``controller-uid`` and
``job-name`` labels on its template; a Service's allocated ``clusterIP``; a Secret's
``stringData`` folded into base64 ``data``. ``status`` sent on create is dropped, as for
every kind with a status subresource.
"""
import base64
import random
from typing import Any, Callable, Dict

GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's, vowels left out


def generate_name(prefix: str, taken: Callable[[str], bool]) -> str:
    """``generateName`` + 5 random characters, the prefix cut to fit 63 (like the server)."""
    for _ in range(100):
        name = prefix[:58] + "".join(random.choice(GENERATE_ALPHABET) for _ in range(5))
        if not taken(name):
            return name
    raise RuntimeError("could not generate a free name")


def _image_pull_policy(image: str) -> str:
    tag = image.rsplit("/", 1)[-1]
    return "Always" if ":" not in tag or tag.endswith(":latest") else "IfNotPresent"


def _qos_class(spec: Dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(r.get("limits", {}).get(k) and
                     r.get("requests", r.get("limits", {})).get(k) == r["limits"][k]
                     for r in resources for k in ("cpu", "memory"))
    return "Guaranteed" if guaranteed else "Burstable"


def default_pod_spec(spec: Dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("securityContext", {})
    for container in spec.get("containers") or []:
        container.setdefault("imagePullPolicy", _image_pull_policy(container.get("image", "")))
        container.setdefault("resources", {})
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")


def default_pod(obj: Dict[str, Any]) -> None:
    default_pod_spec(obj.setdefault("spec", {}))
    obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj["spec"])}


def default_job(obj: Dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    for name, value in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1),
                        ("completionMode", "NonIndexed"), ("suspend", False),
                        ("podReplacementPolicy", "TerminatingOrFailed"),
                        ("manualSelector", None)):
        if value is not None:
            spec.setdefault(name, value)
    meta, uid = obj["metadata"], obj["metadata"]["uid"]
    labels = {"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
              "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    template = spec.setdefault("template", {})
    template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    default_pod_spec(template.setdefault("spec", {}))
    obj["status"] = {}


def default_service(obj: Dict[str, Any], allocate_ip: Callable[[], str]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = allocate_ip()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj["status"] = {"loadBalancer": {}}


def default_secret(obj: Dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(value.encode()).decode()
    if not data:
        obj.pop("data")


def apply_defaults(kind: str, obj: Dict[str, Any], allocate_ip: Callable[[], str]) -> None:
    if kind == "Pod":
        default_pod(obj)
    elif kind == "Job":
        default_job(obj)
    elif kind == "Service":
        default_service(obj, allocate_ip)
    elif kind == "Secret":
        default_secret(obj)
    else:
        obj.pop("status", None)
