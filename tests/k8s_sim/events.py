"""core/v1 Events, as the kubelet and controllers record them.

Mirrors client-go's event recorder as ``kubectl get events`` shows its work: one Event per
(object, reason, message), named ``{object}.{random hex}``, whose ``count`` and
``lastTimestamp`` grow when the same thing happens again. Events are ordinary objects of
the store: list, watch (field selectors ``involvedObject.name``, ``reason``, ``type``…),
get and create through the API like any other kind.

The simulated kubelet and controllers call ``record_event`` on the simulator's loop:

    record_event(store, "default", pod, "Pulled", 'Container image "x" already present')
"""
import copy
import secrets
from typing import Any, Dict, Optional

from .resources import EVENTS
from .store import Store, now_rfc3339

Obj = Dict[str, Any]
TYPES = ("Normal", "Warning")


def involved_reference(obj: Obj) -> Obj:
    """The ``involvedObject`` of an Event about the stored object ``obj``."""
    meta = obj["metadata"]
    return {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"),
            "namespace": meta.get("namespace"), "name": meta["name"], "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion")}


def record_event(store: Store, namespace: str, involved_object: Obj, reason: str,
                 message: str, type: str = "Normal", component: str = "kubelet",
                 host: Optional[str] = "sim-node") -> Obj:
    """Record that ``reason``/``message`` happened to ``involved_object`` (a stored object,
    or an ``involvedObject`` reference); the stored Event. Run it on the simulator's loop."""
    if type not in TYPES:
        raise ValueError(f"an event's type is Normal or Warning, not {type!r}")
    ref = involved_object if "metadata" not in involved_object else \
        involved_reference(involved_object)
    now = now_rfc3339()
    for event in store.items(EVENTS, namespace):
        same = event["involvedObject"]
        if (same.get("uid"), same.get("name"), event["reason"], event["message"]) == \
                (ref.get("uid"), ref.get("name"), reason, message):
            again = copy.deepcopy(event)
            again["count"] = event.get("count", 1) + 1
            again["lastTimestamp"] = now
            return store.update(EVENTS, again)
    source = {"component": component, **({"host": host} if host else {})}
    event = {"apiVersion": "v1", "kind": "Event",
             "metadata": {"name": f"{ref['name']}.{secrets.token_hex(8)}",
                          "namespace": namespace},
             "involvedObject": {k: v for k, v in ref.items() if v is not None},
             "reason": reason, "message": message, "type": type, "source": source,
             "firstTimestamp": now, "lastTimestamp": now, "count": 1,
             "reportingComponent": component, "reportingInstance": host or ""}
    return store.create(EVENTS, namespace, event)


def events_about(store: Store, namespace: str, name: str) -> list:
    """The Events about the object called ``name`` (any kind), oldest first."""
    found = [e for e in store.items(EVENTS, namespace) if e["involvedObject"]["name"] == name]
    return sorted(found, key=lambda e: (e["firstTimestamp"], e["metadata"]["name"]))
