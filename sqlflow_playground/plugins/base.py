"""The plugin contract (DESIGN §6), modelled on Flyte's backend connectors.

A plugin is a class with ``task_type``, ``version``, ``spec_schema`` and three methods:

* ``create(ctx, spec) -> meta``: start the work; ``meta`` is a JSON-able dict the store
  keeps, so the plugin itself holds no state and any replica can poll it;
* ``get(ctx, meta, cursor) -> TaskState``: the job's status and the responses produced
  since ``cursor`` (an opaque string the plugin returned before, "" at first);
* ``delete(ctx, meta)``: stop the work and free what it holds; must be idempotent.

Methods may be ``async def`` or plain ``def``; plain ones run in the bounded executor.
"""
import abc
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN = (
    "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN")
STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED, UNKNOWN)
TERMINAL = frozenset((SUCCEEDED, FAILED, CANCELLED, UNKNOWN))


def is_terminal(status: str) -> bool:
    """True once a job can change no more."""
    return status in TERMINAL


@dataclass
class TaskContext:
    """What a plugin may know about the job it serves."""

    token: str
    user_id: str
    workdir: str  # a private directory for this job's files, created before ``create``
    data_source: Optional[str] = None  # the owner's own database, when provisioned
    max_bytes: int = 1 << 20  # how much response data one ``get`` may return; 0: status only
    #: the server's ``fetch_page_bytes``: no single response may be larger than one page
    page_bytes: int = 1 << 20
    #: how many bytes of output the job may leave on disk (0: no limit); past it the job
    #: ends FAILED with a message saying so, and the output so far is kept
    max_output_bytes: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class TaskState:
    """One observation of a job: its status, and responses since the cursor given."""

    status: str
    message: str = ""
    responses: List[Dict[str, Any]] = field(default_factory=list)
    cursor: str = ""  # pass this to the next ``get`` to continue where this one stopped
    #: True if more responses are ready past ``cursor`` (the page was full), False if not,
    #: None if the plugin cannot tell: then, once the job has ended, the service asks
    #: ``get`` once more from ``cursor`` to know whether this page was the last (eof).
    more: Optional[bool] = None
    outputs: Dict[str, Any] = field(default_factory=dict)
    log_links: List[Dict[str, str]] = field(default_factory=list)
    #: the service's, not the plugin's: ``responses`` as JSON, encoded off the IOLoop
    encoded: Optional[bytes] = field(default=None, repr=False, compare=False)


class TaskPlugin(abc.ABC):
    """Base class of every task type; see the module docstring for the contract."""

    task_type: str = ""
    version: str = "v1"
    description: str = ""
    spec_schema: Dict[str, Any] = {"type": "object"}
    #: whether the job needs its owner's database (``ctx.data_source``) to exist
    needs_database: bool = False
    #: whether the work runs inside the server process's host (its files live there), so
    #: only the replica that started it can follow it
    runs_locally: bool = False
    #: for a plugin that runs locally: the file in the job's ``workdir`` that holds all of
    #: its output, appended to only, so that the replica running the job can ship it to
    #: the store and every other replica serve it (``read_output``); None: only the
    #: replica running the job can answer for it
    output_file: Optional[str] = None
    #: optional, for a plugin with a blocking ``get``: ``glance(ctx, meta)``, blocking and
    #: much cheaper than ``get``, returning a value (compared with ==) that changes
    #: whenever ``get``'s answer for any fixed cursor may have (e.g. the size of the
    #: job's output file and whether its work lives). A fetch waiting for news then calls
    #: ``get`` only when the glance changed, and at least once a second all the same
    #: (longpoll.REFRESH_S). None: ``get`` is called at every look.
    glance = None

    def read_output(self, ctx: TaskContext, cursor: str,
                    complete: bool) -> Tuple[Sequence[Dict[str, Any]], str, Optional[bool]]:
        """(responses, next cursor, whether more lie past it) from ``output_file`` in
        ``ctx.workdir``, read exactly as ``get`` reads it; ``complete``: nothing more will
        be written. Needed with ``output_file``."""
        raise NotImplementedError

    def check_spec(self, spec: Dict[str, Any]) -> None:
        """Refuse (raise ``Unprocessable``, naming the field) a spec that fits
        ``spec_schema`` but cannot work, before anything is created. Called on the IOLoop
        after the schema check: quick, no I/O."""

    @abc.abstractmethod
    def create(self, ctx: TaskContext, spec: Dict[str, Any]) -> Dict[str, Any]:
        """Start the job; return the metadata needed to find it again."""

    @abc.abstractmethod
    def get(self, ctx: TaskContext, meta: Dict[str, Any], cursor: str) -> TaskState:
        """The job's state, with responses produced since ``cursor``.

        An async ``get`` asked by a plugin-door poll starts at once, outside any task, and
        goes on in a task of its own from its first wait (``eager.py``): what needs a task
        before that (``asyncio.timeout``, a ``TaskGroup``) makes that poll be asked again
        the usual way, so ``get`` runs twice for it. Put such things after a first await,
        or make ``get`` plain."""

    @abc.abstractmethod
    def delete(self, ctx: TaskContext, meta: Dict[str, Any]) -> None:
        """Stop the job and free what it holds. Idempotent."""

    def recover(self, ctx: TaskContext, meta: Dict[str, Any]) -> Optional[str]:
        """Called at start-up for a job that was running when the server stopped.

        Return a message to mark the job FAILED with it (the work died with the server),
        or None when the work lives on outside the server and ``get`` can still follow it.
        """
        return None
