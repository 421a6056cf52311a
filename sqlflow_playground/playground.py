"""The playground service: users' databases, heart beats and idle reaping. No HTTP here."""
import asyncio
import contextlib
import logging
import secrets
import socket
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple

from .blocking import BlockingRunner
from .errors import NotFound, Unavailable
from .provisioners import Provisioner
from .store import PROVISIONING, READY, RELEASING, Store

log = logging.getLogger(__name__)

# A release claimed by a replica that then died is taken over after this long.
STALE_RELEASE_S = 300.0
# How long a provisioning claim lasts by default (the Gateway uses the provision timeout
# plus a margin): a replica that dies while provisioning blocks the user at most this long.
CLAIM_TTL_S = 210.0
# A heart beat's status for a user whose database is gone behind our back.
LOST = "lost"
MAX_KNOWN_RESOURCES = 100_000  # users a heart beat remembers the database of (then forgets)
# A create_db that finished while nobody polled keeps its result (or error) this long.
RESULT_KEPT_S = 30.0


class KeyedLocks:
    """One asyncio.Lock per key, dropped again when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: Dict[str, Tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class PlaygroundService:
    """Gives each user one private database and takes it back when they go idle.

    Provisioning and release are serialised per user (single-flight): concurrent
    ``create_db`` calls for one user share one provisioning. Heart beats only touch an
    in-memory dict; ``flush_heartbeats`` writes them to the store in one batch.
    """

    def __init__(self, store: Store, provisioner: Provisioner, runner: BlockingRunner,
                 idle_timeout_s: float, clock: Callable[[], float] = time.time,
                 replica: str = "", claim_ttl_s: float = CLAIM_TTL_S,
                 provision_timeout_s: Optional[float] = None):
        self.store = store
        self.provisioner = provisioner
        self.runner = runner
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.claim_ttl_s = claim_ttl_s
        # What clients are told to wait for (the Gateway's claim is this plus 30 s).
        self.provision_timeout_s = (claim_ttl_s - 30 if provision_timeout_s is None
                                    else provision_timeout_s)
        # Claims name the replica and this process's life, so that after a kill -9 the
        # restarted replica knows its earlier claims are dead without waiting them out.
        self.replica = replica or socket.gethostname()
        self.claimant = f"{self.replica}/{secrets.token_hex(4)}"
        self._locks = KeyedLocks()
        self._beats: Dict[str, float] = {}
        # user -> the resource of their database as last seen here (None: none known), so
        # that a heart beat can tell a lost database without any I/O
        self._resources: Dict[str, Optional[Dict[str, Any]]] = {}
        self._learning: set = set()
        # user -> (their create_db running in the background, when it started): polled
        self._provisioning: Dict[str, Tuple[asyncio.Task, float]] = {}
        # Told (seconds, succeeded) after each provisioning: the Gateway's metrics.
        self.on_provisioned: Callable[[float, bool], None] = lambda seconds, ok: None

    # -- requests ------------------------------------------------------------

    async def create_db(self, user_id: str) -> Tuple[Dict[str, Any], bool]:
        """The user's database, provisioned now if needed. Returns (user, created_now).

        Within a process, calls for one user queue on a lock; across replicas, the store
        row claimed by ``begin_provisioning`` makes exactly one replica provision while the
        others wait for its result, or take over its claim once it is dead (see
        ``_claim_is_dead``), rolling back whatever the dead claimant left half-made.
        """
        async with self._locks.hold(user_id):
            deadline = time.monotonic() + self.claim_ttl_s + 30
            while True:
                user = await self.runner.run(self.store.get_user, user_id)
                if user is not None and user["status"] == READY:
                    if self.provisioner.is_alive(user_id, user["resource"]):
                        self._resources[user_id] = user["resource"]
                        self.heart_beat(user_id)
                        return self.for_users(user), False
                    log.warning("the database of user %s is lost; provisioning it anew", user_id)
                if user is None:
                    if await self.runner.run(self.store.begin_provisioning, user_id,
                                             self.provisioner.name, self.clock(),
                                             self.claimant, self._claim_expiry()):
                        return self.for_users(await self._provision(user_id)), True
                elif user["status"] == PROVISIONING:
                    if self._claim_is_dead(user) and await self._take_over(user, PROVISIONING):
                        try:
                            await self.provisioner.release(user_id, user["resource"])
                        except BaseException:
                            await self.runner.run(self.store.expire_claim, user_id,
                                                  self.claimant)
                            raise
                        return self.for_users(await self._provision(user_id)), True
                else:
                    # Vanished, or a release that was interrupted: finish the release first.
                    claimed = await self.runner.run(self.store.claim_for_release, user_id, None,
                                                    self.clock() - STALE_RELEASE_S)
                    if claimed is not None:
                        await self._release(claimed, "cleared before provisioning anew")
                        continue
                if time.monotonic() > deadline:
                    raise Unavailable(f"the database of {user_id!r} is still being prepared "
                                      "by another server; try again shortly")
                await asyncio.sleep(0.2)  # another replica is at work on this user

    async def create_db_polled(self, user_id: str, wait: float
                               ) -> Tuple[Optional[Tuple[Dict[str, Any], bool]], Dict[str, Any]]:
        """``create_db`` for a client that polls: it runs in the background, and each call
        waits at most ``wait`` seconds for it. Returns ((user, created_now), {}) once it is
        done (raising its error if it failed), else (None, progress): ``status``
        "provisioning", ``phase`` (None when the provisioner cannot tell), ``elapsed_s``
        and ``provision_timeout_s``."""
        task, started = self._provisioning.get(user_id) or self._start_create_db(user_id)
        await asyncio.wait([task], timeout=wait)
        if task.done():
            self._forget_create_db(user_id, task)
            return task.result(), {}
        phase = getattr(self.provisioner, "provisioning_phase", None)
        return None, {"status": "provisioning", "phase": phase(user_id) if phase else None,
                      "elapsed_s": round(time.monotonic() - started, 1),
                      "provision_timeout_s": self.provision_timeout_s}

    def _start_create_db(self, user_id: str) -> Tuple[asyncio.Task, float]:
        task = asyncio.get_running_loop().create_task(self.create_db(user_id))
        self._provisioning[user_id] = entry = (task, time.monotonic())

        def done(_: asyncio.Task) -> None:
            if not task.cancelled():
                task.exception()  # retrieved: a poller that gave up leaves no warning
            asyncio.get_running_loop().call_later(RESULT_KEPT_S, self._forget_create_db,
                                                  user_id, task)
        task.add_done_callback(done)
        return entry

    def _forget_create_db(self, user_id: str, task: asyncio.Task) -> None:
        if self._provisioning.get(user_id, (None,))[0] is task:
            del self._provisioning[user_id]

    async def _provision(self, user_id: str) -> Dict[str, Any]:
        """Provision under this process's claim; on failure roll back what was made, so no
        half-made database or account outlives the row that explains it."""
        started = self.clock()
        log.info("provisioning a %s database for user %s", self.provisioner.name, user_id,
                 extra={"fields": {"event": "provisioning_started", "user_id": user_id,
                                   "provisioner": self.provisioner.name}})
        try:
            provisioned = await self.provisioner.provision(user_id)
        except BaseException as e:
            self.on_provisioned(self.clock() - started, False)
            log.warning("provisioning a %s database for user %s failed after %.2fs (%s); "
                        "rolling back what was made", self.provisioner.name, user_id,
                        self.clock() - started, getattr(e, "message", type(e).__name__),
                        extra={"fields": {"event": "provisioning_failed", "user_id": user_id,
                                          "duration_s": round(self.clock() - started, 3)}})
            try:
                await self.provisioner.release(user_id, {})
                await self.runner.run(self.store.delete_user, user_id)  # the next try starts
            except Exception as e:
                # Keep the row, its claim expired at once: the next create_db, delete_db or
                # reaper rolls it back again.
                log.warning("rolling back the failed provisioning of user %s failed (%s); "
                            "it is retried later", user_id,
                            getattr(e, "message", type(e).__name__))
                await self.runner.run(self.store.expire_claim, user_id, self.claimant)
            raise
        self.on_provisioned(self.clock() - started, True)
        user = await self.runner.run(
            self.store.save_user, user_id, self.provisioner.name, provisioned.data_source,
            provisioned.resource, self.clock())
        self._resources[user_id] = provisioned.resource
        log.info("provisioned a %s database for user %s in %.2fs",
                 self.provisioner.name, user_id, self.clock() - started,
                 extra={"fields": {"event": "provisioned", "user_id": user_id,
                                   "provisioner": self.provisioner.name,
                                   "duration_s": round(self.clock() - started, 3)}})
        return user

    def _claim_expiry(self) -> float:
        return self.clock() + self.claim_ttl_s

    def _claim_is_dead(self, user: Dict[str, Any]) -> bool:
        """Whether a provisioning claim can be taken over: it expired, or it was made by
        an earlier life of this replica (same replica name, another process)."""
        expires = user.get("claim_expires_at")
        if expires is None:  # a row from before claims had an expiry
            expires = user["status_changed_at"] + self.claim_ttl_s
        if expires < self.clock():
            return True
        replica, _, _ = (user.get("claimed_by") or "").rpartition("/")
        return replica == self.replica and user.get("claimed_by") != self.claimant

    async def _take_over(self, user: Dict[str, Any], status: str) -> bool:
        won = await self.runner.run(self.store.take_over, user, status, self.claimant,
                                    self._claim_expiry(), self.clock())
        if won:
            log.warning("took over the dead provisioning claim of user %s (held by %s); "
                        "rolling it back", user["user_id"], user.get("claimed_by") or "?")
        return won

    async def recover(self) -> int:
        """At start-up: roll back the provisioning claims an earlier life of this replica
        left (it was killed while provisioning), so those users can start again at once.
        Returns how many."""
        rolled_back = 0
        for user in await self.runner.run(self.store.provisioning_claims):
            if self._claim_is_dead(user) and await self._take_over(user, RELEASING):
                await self._release(user, "its provisioning died with a server")
                rolled_back += 1
        return rolled_back

    def heart_beat(self, user_id: str) -> str:
        """Record that the user is alive: "ok"; or "lost" when their database is known to be
        gone (a dead pod), and then the beat does not count: the reaper may release it, the
        next create_db provisions it anew. No I/O: a user not seen here yet is looked up in
        the background, for the next beat."""
        if user_id not in self._resources:
            if len(self._resources) >= MAX_KNOWN_RESOURCES:
                self._resources.clear()
            self._resources[user_id] = None
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to learn
                task = asyncio.get_running_loop().create_task(self._learn_resource(user_id))
                self._learning.add(task)
                task.add_done_callback(self._learning.discard)
        resource = self._resources[user_id]
        if resource is not None and not self.provisioner.is_alive(user_id, resource):
            return LOST
        self._beats[user_id] = self.clock()
        return "ok"

    async def _learn_resource(self, user_id: str) -> None:
        try:
            user = await self.runner.run(self.store.get_user, user_id)
        except Exception:
            self._resources.pop(user_id, None)  # asked again at the next beat
            return
        # Unless create_db or a release here told better meanwhile:
        if user is not None and user["status"] == READY and \
                user_id in self._resources and self._resources[user_id] is None:
            self._resources[user_id] = user["resource"]

    async def delete_db(self, user_id: str) -> bool:
        """Release the user's database now, in whatever state it is. False if there was
        none. A database another replica is still provisioning is waited for."""
        async with self._locks.hold(user_id):
            deadline = time.monotonic() + self.claim_ttl_s + 30
            while True:
                user = await self.runner.run(self.store.claim_for_release, user_id, None,
                                             self.clock() - STALE_RELEASE_S)
                if user is not None:
                    await self._release(user, "deleted on request")
                    self._forget_finished_create_db(user_id)
                    return True
                user = await self.runner.run(self.store.get_user, user_id)
                if user is None:
                    return False
                if user["status"] == PROVISIONING and self._claim_is_dead(user) \
                        and await self._take_over(user, RELEASING):
                    await self._release(user, "deleted on request while provisioning")
                    return True
                if user["status"] == RELEASING:
                    return False  # another replica is releasing it right now
                if time.monotonic() > deadline:
                    raise Unavailable(f"the database of {user_id!r} is still being prepared "
                                      "by another server; try again shortly")
                await asyncio.sleep(0.2)

    def _forget_finished_create_db(self, user_id: str) -> None:
        """A kept create_db result names a database just released: never hand it out."""
        task = self._provisioning.get(user_id, (None,))[0]
        if task is not None and task.done():
            self._forget_create_db(user_id, task)

    async def get_user(self, user_id: str) -> Dict[str, Any]:
        user = await self.runner.run(self.store.get_user, user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} has no database; call /api/create_db")
        return self.for_users(self._with_pending_beat(user))

    async def list_users(self) -> List[Dict[str, Any]]:
        return [self._with_pending_beat(u) for u in await self.runner.run(self.store.list_users)]

    # -- data sources ------------------------------------------------------------

    def _data_source(self, user: Dict[str, Any], rewrite: Callable[[str], str]) -> str:
        """The stored data source, its address taken from the current settings when the
        row is this provisioner's (a kubernetes row's host is its own pod's Service)."""
        data_source = user.get("data_source") or ""
        if data_source and user.get("provisioner") == self.provisioner.name:
            return rewrite(data_source)
        return data_source

    def for_users(self, user: Dict[str, Any]) -> Dict[str, Any]:
        """The user's row with the data source as users get it (--mysql_public_host)."""
        return {**user, "data_source": self._data_source(user,
                                                         self.provisioner.public_data_source)}

    def job_data_source(self, user: Dict[str, Any]) -> str:
        """The data source the jobs this server runs connect with (the host of
        --mysql_dsn): the public name may not resolve here."""
        return self._data_source(user, self.provisioner.internal_data_source)

    # -- background work -----------------------------------------------------

    async def flush_heartbeats(self) -> None:
        """Write buffered heart beats to the store in one transaction."""
        if not self._beats:
            return
        beats, self._beats = self._beats, {}
        try:
            await self.runner.run(self.store.touch_users, beats)
        except Exception:
            # Put them back (newer beats win) so a store outage loses nothing.
            for user_id, ts in beats.items():
                self._beats[user_id] = max(ts, self._beats.get(user_id, 0.0))
            raise

    async def reap_idle(self) -> List[str]:
        """Release the database of every user idle for ``idle_timeout_s``; return who."""
        await self.flush_heartbeats()
        now = self.clock()
        idle_before, stale_before = now - self.idle_timeout_s, now - STALE_RELEASE_S
        released = []
        for user_id in await self.runner.run(self.store.idle_candidates, idle_before,
                                             stale_before, now):
            try:
                if await self._release_if_idle(user_id, idle_before, stale_before):
                    released.append(user_id)
            except Exception:
                # One user's failure must not stop the sweep; the next sweep retries.
                log.exception("idle reaper: releasing user %s failed", user_id)
        return released

    async def _release_if_idle(self, user_id: str, idle_before: float, stale_before: float) -> bool:
        async with self._locks.hold(user_id):
            if self._beats.get(user_id, 0.0) >= idle_before:
                return False  # a heart beat arrived since the flush
            user = await self.runner.run(self.store.claim_for_release, user_id,
                                         idle_before, stale_before)
            if user is None:
                user = await self.runner.run(self.store.get_user, user_id)
                if user is None or user["status"] != PROVISIONING \
                        or not self._claim_is_dead(user) \
                        or not await self._take_over(user, RELEASING):
                    return False  # seen meanwhile, or another replica took it
                await self._release(user, "its provisioning claim expired")
                return True
            await self._release(user, f"idle for more than {self.idle_timeout_s:g}s")
            return True

    async def _release(self, user: Dict[str, Any], why: str) -> None:
        await self.provisioner.release(user["user_id"], user["resource"])
        await self.runner.run(self.store.delete_user, user["user_id"])
        self._beats.pop(user["user_id"], None)
        self._resources.pop(user["user_id"], None)
        log.info("released the database of user %s: %s", user["user_id"], why)

    def _with_pending_beat(self, user: Dict[str, Any]) -> Dict[str, Any]:
        pending: Optional[float] = self._beats.get(user["user_id"])
        if pending and pending > user["last_seen_at"]:
            return {**user, "last_seen_at": pending}
        return user
