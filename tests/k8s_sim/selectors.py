"""Label and field selectors, parsed and matched like ``k8s.io/apimachinery`` does.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``,
``!a``, ``a>1``, ``a<1``, comma-separated and ANDed; ``!=`` and ``notin`` also match
objects without the key. Field selectors: ``f=v``, ``f==v``, ``f!=v`` on the fields each
resource supports; anything else is a 400, as on the real server.
"""
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import bad_request
from .validation import label_key_errors, label_value_errors

Requirement = Tuple[str, str, Tuple[str, ...]]
Matcher = Callable[[Dict[str, Any]], bool]

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_EQUALITY = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")
_ORDER = re.compile(rf"^({_KEY})\s*([<>])\s*(-?[0-9]+)$")


def _split(selector: str) -> List[str]:
    """Split on the commas that are not inside ``( … )``."""
    parts, depth, current = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_label_selector(selector: Optional[str]) -> List[Requirement]:
    if not selector or not selector.strip():
        return []
    requirements = []
    for part in _split(selector):
        m = _SET.match(part)
        if m:
            values = tuple(v.strip() for v in m.group(3).split(","))
            req = (m.group(1), m.group(2), values)
        elif _EQUALITY.match(part):
            key, op, value = _EQUALITY.match(part).groups()
            req = (key, "!=" if op == "!=" else "=", (value,))
        elif _ORDER.match(part):
            key, op, value = _ORDER.match(part).groups()
            req = (key, op, (value,))
        elif _EXISTS.match(part):
            bang, key = _EXISTS.match(part).groups()
            req = (key, "!" if bang else "exists", ())
        else:
            raise bad_request(f"unable to parse requirement: found '{part}', "
                              "expected: identifier, in, notin, =, ==, !=, gt, lt")
        ordered = req[1] in ("<", ">")
        errors = label_key_errors(req[0]) + [e for v in req[2] if not ordered
                                             for e in label_value_errors(v)]
        if errors:
            raise bad_request(f"unable to parse requirement: {'; '.join(errors)}")
        requirements.append(req)
    return requirements


def labels_match(requirements: Sequence[Requirement], labels: Optional[Dict[str, str]]) -> bool:
    labels = labels or {}
    for key, op, values in requirements:
        present, value = key in labels, labels.get(key)
        if op == "exists" and not present or op == "!" and present:
            return False
        if op in ("=", "in") and value not in values:
            return False
        if op in ("!=", "notin") and present and value in values:
            return False
        if op in ("<", ">"):
            try:
                number = int(value) if present else None
            except ValueError:
                number = None
            bound = int(values[0])
            if number is None or (op == ">" and number <= bound) or (op == "<" and number >= bound):
                return False
    return True


def field_value(obj: Dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def parse_field_selector(selector: Optional[str],
                         supported: Sequence[str]) -> List[Tuple[str, str, str]]:
    if not selector or not selector.strip():
        return []
    terms = []
    for part in selector.split(","):
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{part}'")
        field, op, value = m.groups()
        if field not in supported:
            raise bad_request(f'field label not supported: {field}')
        terms.append((field, "!=" if op == "!=" else "=", value))
    return terms


def matcher(label_selector: Optional[str], field_selector: Optional[str],
            supported_fields: Sequence[str]) -> Matcher:
    """One predicate over whole objects for both selectors (raises 400 when malformed)."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, supported_fields)

    def match(obj: Dict[str, Any]) -> bool:
        if not labels_match(labels, obj.get("metadata", {}).get("labels")):
            return False
        return all((field_value(obj, f) == v) == (op == "=") for f, op, v in fields)
    return match
