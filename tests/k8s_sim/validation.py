"""Admission checks for created and patched objects, as the real API server makes them.

Three layers, like ``k8s.io/kubernetes/pkg/apis/*/validation``: the object must match the
real OpenAPI schema of its kind (``kubernetes-validate``, strict: unknown fields are
errors); names must be DNS-1123 subdomains (services: DNS-1035 labels); label and
annotation keys must be qualified names and label values valid label values; plus the
semantic rules the schema cannot express (a pod needs containers with names and images, a
Job's pods may not restart Always, a ClusterIP Service needs ports, …). Every failure is a
cause ``{"reason", "message", "field"}`` of one 422 ``Invalid`` Status.
"""
import base64
import binascii
import re
from typing import Any, Dict, List, Optional

import kubernetes_validate

from .errors import invalid

Cause = Dict[str, str]

SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)"
                      r"(([KMGTPE]i)|[numkMGTPE]|[eE][-+]?[0-9]+)?$")


def _msg(value: str, what: str, regex: str) -> str:
    return f'Invalid value: "{value}": {what}, regex used for validation is \'{regex}\''


def subdomain_errors(name: str) -> List[str]:
    if len(name) > 253:
        return ["must be no more than 253 characters"]
    if SUBDOMAIN.match(name):
        return []
    return [_msg(name, "a lowercase RFC 1123 subdomain must consist of lower case "
                 "alphanumeric characters, '-' or '.', and must start and end with an "
                 "alphanumeric character", SUBDOMAIN.pattern[1:-1])]


def label_errors(name: str, rule: str = "dns1123") -> List[str]:
    regex = DNS1035_LABEL if rule == "dns1035" else DNS1123_LABEL
    errors = ["must be no more than 63 characters"] if len(name) > 63 else []
    if not regex.match(name):
        what = ("a DNS-1035 label must consist of lower case alphanumeric characters or "
                "'-', start with an alphabetic character, and end with an alphanumeric "
                "character") if rule == "dns1035" else (
                "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                "characters or '-', and must start and end with an alphanumeric character")
        errors.append(_msg(name, what, regex.pattern[1:-1]))
    return errors


def label_key_errors(key: str) -> List[str]:
    """A qualified name: an optional DNS subdomain prefix, ``/``, a name of ≤ 63 chars."""
    prefix, _, name = key.rpartition("/")
    errors = [f"prefix part {e}" for e in subdomain_errors(prefix)] if "/" in key else []
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        errors.append(_msg(key, "name part must consist of alphanumeric characters, '-', "
                           "'_' or '.', must start and end with an alphanumeric character "
                           "and be no more than 63 characters", QUALIFIED_NAME.pattern[1:-1]))
    return errors


def label_value_errors(value: Any) -> List[str]:
    if not isinstance(value, str):
        return [f"Invalid value: {value!r}: label values must be strings"]
    if len(value) <= 63 and LABEL_VALUE.match(value):
        return []
    return [_msg(value, "a valid label must be an empty string or consist of alphanumeric "
                 "characters, '-', '_' or '.', must start and end with an alphanumeric "
                 "character and be no more than 63 characters", LABEL_VALUE.pattern[1:-1])]


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> Cause:
    return {"reason": reason, "message": message, "field": field}


def _required(field: str, detail: str = "") -> Cause:
    return _cause(field, "Required value" + (f": {detail}" if detail else ""),
                  "FieldValueRequired")


def schema_causes(obj: Dict[str, Any], version: str) -> List[Cause]:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        parent = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.path)[1:]
        required = re.match(r"'([^']+)' is a required property", e.message)
        unknown = re.search(r"\('([^']+)' (was|were) unexpected\)", e.message)
        if required:
            return [_required(".".join(filter(None, [parent, required.group(1)])))]
        if unknown:
            field = ".".join(filter(None, [parent, unknown.group(1)]))
            return [_cause(field, f'unknown field "{field}"', "FieldValueNotSupported")]
        return [_cause(parent, f"Invalid value: {e.instance!r}: {e.message}")]
    except kubernetes_validate.SchemaNotFoundError:
        return []
    return []


def metadata_causes(rt: Any, meta: Dict[str, Any]) -> List[Cause]:
    name = meta.get("name") or ""
    if not name:
        return [_required("metadata.name", "name or generateName is required")]
    errors = label_errors(name, rt.name_rule) if rt.name_rule == "dns1035" else \
        subdomain_errors(name)
    causes = [_cause("metadata.name", e) for e in errors]
    for key, value in (meta.get("labels") or {}).items():
        causes += [_cause("metadata.labels", e) for e in label_key_errors(key)]
        causes += [_cause("metadata.labels", e) for e in label_value_errors(value)]
    for key in meta.get("annotations") or {}:
        causes += [_cause("metadata.annotations", e) for e in label_key_errors(key)]
    return causes


def _quantity_causes(field: str, resources: Dict[str, Any]) -> List[Cause]:
    causes = []
    for kind in ("limits", "requests"):
        for res, qty in (resources.get(kind) or {}).items():
            if not QUANTITY.match(str(qty)):
                causes.append(_cause(f"{field}.{kind}[{res}]", f'Invalid value: "{qty}": '
                                     "quantities must match the regular expression "
                                     f"'{QUANTITY.pattern}'"))
    return causes


def pod_spec_causes(spec: Dict[str, Any], field: str) -> List[Cause]:
    containers = spec.get("containers") or []
    if not containers:
        return [_required(f"{field}.containers")]
    causes, seen = [], set()
    for i, c in enumerate(containers):
        where = f"{field}.containers[{i}]"
        name = c.get("name") or ""
        causes += [_cause(f"{where}.name", e) for e in label_errors(name)] if name else \
            [_required(f"{where}.name")]
        if name in seen:
            causes.append(_cause(f"{where}.name", f'Duplicate value: "{name}"',
                                 "FieldValueDuplicate"))
        seen.add(name)
        if not c.get("image"):
            causes.append(_required(f"{where}.image"))
        for j, env in enumerate(c.get("env") or []):
            if not ENV_NAME.match(env.get("name") or ""):
                causes.append(_cause(f"{where}.env[{j}].name", f'Invalid value: '
                                     f'"{env.get("name")}": a valid environment variable '
                                     "name must consist of alphabetic characters, digits, "
                                     "'_', '-', or '.', and must not start with a digit"))
        causes += _quantity_causes(f"{where}.resources", c.get("resources") or {})
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append(_cause(f"{field}.restartPolicy", f'Unsupported value: "{policy}"',
                             "FieldValueNotSupported"))
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and not 1 <= deadline <= 2 ** 31 - 1:
        causes.append(_cause(f"{field}.activeDeadlineSeconds", f"Invalid value: {deadline}: "
                             "must be between 1 and 2147483647, inclusive"))
    return causes


def job_causes(obj: Dict[str, Any]) -> List[Cause]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    causes = pod_spec_causes(template.get("spec") or {}, "spec.template.spec")
    policy = (template.get("spec") or {}).get("restartPolicy")
    if policy not in ("OnFailure", "Never"):
        causes.append(_cause("spec.template.spec.restartPolicy",
                             f'Unsupported value: "{policy or "Always"}": supported values: '
                             '"OnFailure", "Never"', "FieldValueNotSupported"))
    for name in ("parallelism", "completions", "backoffLimit", "activeDeadlineSeconds"):
        if (spec.get(name) or 0) < 0:
            causes.append(_cause(f"spec.{name}", f"Invalid value: {spec[name]}: must be "
                                 "greater than or equal to 0"))
    # The controller labels the job's pods with its name, so the name must be a label value.
    causes += [_cause("spec.template.labels", e)
               for e in label_value_errors(obj["metadata"].get("name", ""))]
    return causes


def service_causes(spec: Dict[str, Any]) -> List[Cause]:
    ports = spec.get("ports") or []
    if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        return [_required("spec.ports")]
    causes = []
    for i, port in enumerate(ports):
        if not 1 <= (port.get("port") or 0) <= 65535:
            causes.append(_cause(f"spec.ports[{i}].port", f"Invalid value: {port.get('port')}"
                                 ": must be between 1 and 65535, inclusive"))
        if len(ports) > 1 and not port.get("name"):
            causes.append(_required(f"spec.ports[{i}].name"))
    return causes


def secret_causes(obj: Dict[str, Any]) -> List[Cause]:
    causes, size = [], 0
    for key, value in (obj.get("data") or {}).items():
        if not SECRET_KEY.match(key):
            causes.append(_cause(f"data[{key}]", f'Invalid value: "{key}": a valid config '
                                 "key must consist of alphanumeric characters, '-', '_' or '.'"))
        try:
            size += len(base64.b64decode(value or "", validate=True))
        except (binascii.Error, ValueError):
            causes.append(_cause(f"data[{key}]", "illegal base64 data"))
    if size > 1024 * 1024:
        causes.append(_cause("data", "Too long: must have at most 1048576 bytes",
                             "FieldValueTooLong"))
    return causes


def validate_object(rt: Any, obj: Dict[str, Any], version: Optional[str]) -> None:
    """Raise the 422 the real API server would answer for ``obj``; return if it is valid."""
    meta = obj.get("metadata") or {}
    causes = schema_causes(obj, version) if rt.builtin and version else []
    causes += metadata_causes(rt, meta)
    if not causes:
        spec = obj.get("spec") or {}
        if rt.kind == "Pod":
            causes = pod_spec_causes(spec, "spec")
        elif rt.kind == "Job":
            causes = job_causes(obj)
        elif rt.kind == "Service":
            causes = service_causes(spec)
        elif rt.kind == "Secret":
            causes = secret_causes(obj)
    if causes:
        raise invalid(rt, meta.get("name") or meta.get("generateName") or "", causes)
