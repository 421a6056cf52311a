"""The interface every per-user database backend implements."""
import abc
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Dict

from ..blocking import BlockingRunner


@dataclass(frozen=True)
class Provisioned:
    """A user's database: the data source handed to the user, and the names to release it."""

    data_source: str
    resource: Dict[str, Any] = field(default_factory=dict)


class Provisioner(abc.ABC):
    """Creates and releases one private database per user.

    ``provision`` must be idempotent: called again after a crash half-way, it finishes
    the job rather than failing. ``release`` must succeed when the database is already gone.
    The service serialises calls per user, so implementations need no locking of their own.
    """

    name: str = ""

    def __init__(self, runner: BlockingRunner):
        self.runner = runner

    @abc.abstractmethod
    async def provision(self, user_id: str) -> Provisioned:
        """Create (or finish creating) the user's database."""

    @abc.abstractmethod
    async def release(self, user_id: str, resource: Dict[str, Any]) -> None:
        """Drop the user's database and credentials."""

    def is_alive(self, user_id: str, resource: Dict[str, Any]) -> bool:
        """False when the database is known to be gone behind our back (a deleted pod), so
        the next ``create_db`` provisions it anew. Must be cheap: no I/O."""
        return True

    def public_data_source(self, data_source: str) -> str:
        """The data source as users get it (``create_db``, ``/api/users``), from what the
        store keeps, by the current settings (e.g. ``--mysql_public_host``)."""
        return data_source

    def internal_data_source(self, data_source: str) -> str:
        """The data source the jobs this server runs connect with."""
        return data_source

    async def check(self) -> None:
        """Raise ``Unavailable`` if the backend cannot be reached."""

    def close(self) -> None:
        """Free connections and other held resources."""


def safe_name(user_id: str, prefix: str, max_len: int) -> str:
    """A ``[a-z0-9_]`` name derived from ``user_id``, unique even where the ids differ only
    in case or punctuation (``Alice`` vs ``alice``, ``a.b`` vs ``a_b``): a hash is appended.
    """
    digest = hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "_", user_id.lower()).strip("_")
    room = max_len - len(prefix) - len(digest) - 1
    return f"{prefix}{slug[:room]}_{digest}" if slug[:room] else f"{prefix}{digest}"
