"""Kubernetes-safe names and the labels every object the playground creates carries.

User ids (``^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$``) and job tokens are neither valid object
names nor always valid label values. The names derived here must stay distinct whenever
the ids differ at all (``Alice``/``alice``, ``a.b``/``a_b``): a user's pod, Secret and
Service are found by name and by label, so a collision would hand one user another's
database. Hence a hash of the exact text wherever the text itself had to be changed.
"""
import hashlib
import re
from typing import Dict, Optional

MANAGED_BY = ("app.kubernetes.io/managed-by", "sqlflow-playground")
USER_LABEL = "sqlflow.tech/user"
JOB_LABEL = "sqlflow.tech/job"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
# Label keys under this prefix are the playground's; user manifests may not set them.
RESERVED_LABEL_PREFIX = "sqlflow.tech/"

DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# A prefix that starts with a letter makes every derived name a DNS-1035 label too,
# which Service names must be.
_PREFIX_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What a hashed label value ends with; text that already ends so is hashed too, which
# keeps label_value one-to-one (no id can be sent verbatim onto another id's hashed form).
_HASHED_TAIL_RE = re.compile(r"--[0-9a-f]{8}$")
MAX_LABEL = 63


def digest(text: str, length: int = 8) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def dns_label(user_id: str, prefix: str, max_len: int = MAX_LABEL) -> str:
    """A DNS-1123 (and DNS-1035) label such as ``sfp-mysql-alice-1a2b3c4d`` for ``user_id``.

    The readable part is the id lower-cased with every other character run turned into
    ``-`` and cut to fit; the 8-hex hash of the exact id keeps different ids apart.
    """
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} must be a DNS label starting with a letter")
    hashed = digest(user_id)
    room = min(max_len, MAX_LABEL) - len(prefix) - len(hashed) - 2
    if room < 0:
        raise ValueError(f"prefix {prefix!r} leaves no room for a hash within {max_len}")
    slug = re.sub(r"[^a-z0-9]+", "-", user_id.lower()).strip("-")[:room].rstrip("-")
    return "-".join(part for part in (prefix, slug, hashed) if part)


def hashed_name(text: str, prefix: str, length: int = 16) -> str:
    """``prefix-<hash>``: an object name that reveals nothing of ``text`` (a job token)."""
    if not _PREFIX_RE.match(prefix) or len(prefix) + length + 1 > MAX_LABEL:
        raise ValueError(f"prefix {prefix!r} must be a short DNS label starting with a letter")
    return f"{prefix}-{digest(text, length)}"


def label_value(text: str) -> str:
    """A valid label value for a user id or job token: the text itself when it is one,
    else the text with invalid characters replaced, cut to fit, plus ``--<hash>``."""
    if not text:
        raise ValueError("a label value is derived from a non-empty id")
    if len(text) <= MAX_LABEL and LABEL_VALUE_RE.match(text) and not _HASHED_TAIL_RE.search(text):
        return text
    tail = "--" + digest(text)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
    slug = re.sub(r"^[^A-Za-z0-9]+", "", slug)[:MAX_LABEL - len(tail)]
    slug = re.sub(r"[^A-Za-z0-9]+$", "", slug)
    return slug + tail if slug else tail[2:]


def managed_labels(user_id: Optional[str] = None,
                   job_token: Optional[str] = None) -> Dict[str, str]:
    """The labels that let the server find (and reconcile) what it created."""
    labels = {MANAGED_BY[0]: MANAGED_BY[1]}
    if user_id is not None:
        labels[USER_LABEL] = label_value(user_id)
    if job_token is not None:
        labels[JOB_LABEL] = label_value(job_token)
    return labels


def managed_selector(user_id: Optional[str] = None, job_token: Optional[str] = None) -> str:
    """``managed_labels`` as a label selector string for list and watch calls."""
    return ",".join(f"{key}={value}"
                    for key, value in managed_labels(user_id, job_token).items())
