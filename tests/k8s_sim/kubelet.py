"""A simulated node: runs each pod's first container as a local process.

Mirrors the scheduler + kubelet as a client sees them through pod status: a pod is bound
to the node, waits in ``ContainerCreating`` for ``startup_delay`` seconds, then runs the
first container's ``command`` + ``args`` (in its own process group, with the container's
``env`` — ``value``, ``secretKeyRef``, ``fieldRef`` — in a temporary working directory),
its stdout and stderr captured line by line for the log endpoint. Exit 0 → ``Succeeded``
(reason ``Completed``), else ``Failed`` (reason ``Error``, signals as 128+n), unless
``restartPolicy`` restarts it (``CrashLoopBackOff`` in between). ``activeDeadlineSeconds``
kills it, also while its container waits (an image that cannot be pulled): pod
``reason: DeadlineExceeded``, container exit 137. MySQL/MariaDB images run a fake mysqld:
Running at once, Ready after ``mysql_ready_delay``, remembering the credentials of its
environment (``mysql_refusal`` checks a client's against them); on SIGTERM it takes
``mysql_shutdown_s`` to stop. A container without command or args runs like a server until
deleted. Deleting a running pod sends SIGTERM to its group, SIGKILL after the grace period
(capped by ``max_grace_s``); the pod stays, Terminating, until its process is gone.

Faults (``faults``: standing rules the simulator's ``inject`` adds): ``unschedulable`` pods
stay Pending with ``PodScheduled=False``, reason ``Unschedulable``; ``unpullable`` images (and
any named ``unpullable/...``) wait in ``ErrImagePull`` then ``ImagePullBackOff``; a
``crashloop`` MySQL pod's mysqld exits at once, again and again (``CrashLoopBackOff``), and
an ``oomkilled`` one is killed so (exit 137, ``OOMKilled``), as its restart policy is Always.
"""
import asyncio
import copy
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from . import podstatus
from .events import record_event
from .environment import ConfigError, container_environment
from .logs import ContainerLog, pump
from .resources import PODS
from .store import Event, Store

POD_LEVEL_REASONS = ("DeadlineExceeded", "Evicted", "Preempting", "NodeLost", "Shutdown")
WAITING_REASONS = ("ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "InvalidImageName",
                   "CreateContainerConfigError", "CreateContainerError", "ContainerCreating")


@dataclass
class PodRuntime:
    namespace: str
    name: str
    uid: str
    log: ContainerLog = field(default_factory=ContainerLog)
    proc: Optional[asyncio.subprocess.Process] = None
    started: bool = False
    done: bool = False                     # no more status changes from the kubelet
    kill_reason: Optional[tuple] = None    # (exit code, reason, message) once killed
    on_gone: Optional[Callable[[], None]] = None  # graceful deletion finished
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: Optional[asyncio.Task] = None
    timer: Optional[asyncio.TimerHandle] = None
    workdir: Optional[str] = None
    final: bool = False                    # its phase is Succeeded or Failed
    mysql_env: Optional[Dict[str, str]] = None  # a fake mysqld's environment, once it runs
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a fault was injected


class Kubelet:
    def __init__(self, store: Store, port: int, *, node_name: str = "sim-node",
                 startup_delay: float = 0.05, mysql_ready_delay: float = 0.2,
                 max_grace_s: float = 2.0, restart_backoff_s: float = 0.2,
                 log_clock_resolution_ns: int = 1) -> None:
        self.store, self.port, self.node_name = store, port, node_name
        self.log_clock_resolution_ns = log_clock_resolution_ns
        self.startup_delay, self.mysql_ready_delay = startup_delay, mysql_ready_delay
        self.max_grace_s, self.restart_backoff_s = max_grace_s, restart_backoff_s
        self.image_pull_backoff_images: set = set()
        self.mysql_shutdown_s = 0.0  # how long a fake mysqld takes to stop after SIGTERM
        self.faults: List[tuple] = []  # (matches(pod) -> bool, fault), see has_fault
        self.pods: Dict[str, PodRuntime] = {}
        self.spawned: List[int] = []  # every container process (= process group) started
        self._ips = iter(range(2, 65000))
        store.listeners.append(self.on_event)

    def runtime(self, namespace: str, name: str) -> Optional[PodRuntime]:
        pod = self.store.find(PODS, namespace, name)
        return self.pods.get(pod["metadata"]["uid"]) if pod else None

    def has_fault(self, pod: Optional[Dict[str, Any]], fault: str) -> bool:
        return pod is not None and any(f == fault and matches(pod) for matches, f in self.faults)

    def poke(self) -> None:
        """Faults changed: every pod looks again."""
        for r in self.pods.values():
            r.wake.set()

    def _warn(self, r: PodRuntime, reason: str, message: str,
               component: str = "kubelet") -> None:
        """A Warning Event about the pod, as ``kubectl describe pod`` lists them."""
        pod = self._pod(r)
        if pod is not None:
            record_event(self.store, r.namespace, pod, reason, message, "Warning", component,
                         None if component == "default-scheduler" else self.node_name)

    async def _nap(self, r: PodRuntime, seconds: float) -> None:
        """Sleep, cut short by a fault injected or the pod stopping."""
        r.wake.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (r.wake, r.stop)]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def on_event(self, ev: Event) -> None:
        if ev.rt is not PODS:
            return
        uid = ev.obj["metadata"]["uid"]
        if ev.type == "ADDED":
            r = self.pods[uid] = PodRuntime(ev.obj["metadata"]["namespace"],
                                            ev.obj["metadata"]["name"], uid,
                                            ContainerLog(self.log_clock_resolution_ns))
            r.task = asyncio.get_running_loop().create_task(self._run(r))
        elif ev.type == "DELETED" and uid in self.pods:
            self._kill(self.pods.pop(uid), signal.SIGKILL)

    # -- status writes
    def _write(self, r: PodRuntime, change: Callable[[Dict[str, Any]], Any],
               final: bool = False) -> bool:
        """Apply ``change`` to a copy of the pod and store it, unless the pod is gone or
        already final (only the write that makes it final passes ``final=True``)."""
        pod = self._pod(r)
        if pod is None or (r.done and not final):
            return False
        pod = copy.deepcopy(pod)
        change(pod)
        self.store.update(PODS, pod)
        return True

    def _pod(self, r: PodRuntime) -> Optional[Dict[str, Any]]:
        pod = self.store.find(PODS, r.namespace, r.name)
        return pod if pod and pod["metadata"]["uid"] == r.uid else None

    # -- the pod's life
    async def _run(self, r: PodRuntime) -> None:
        try:
            await self._live(r)
        finally:
            r.log.close()
            if r.timer and r.final:
                r.timer.cancel()
            if r.workdir:
                shutil.rmtree(r.workdir, ignore_errors=True)
            if r.on_gone:
                r.on_gone()

    async def _live(self, r: PodRuntime) -> None:
        if not await self._schedule(r):
            return
        self._write(r, lambda p: podstatus.creating(p, "10.0.0.1"))
        pod = self._pod(r)
        deadline = pod and pod["spec"].get("activeDeadlineSeconds")
        if deadline:  # counted from startTime, so also while the container waits
            r.timer = asyncio.get_running_loop().call_later(
                deadline, self.fail, r, "DeadlineExceeded",
                "Pod was active on the node longer than the specified deadline")
        await asyncio.sleep(self.startup_delay)
        env = await self._resolve_env(r)
        pod = self._pod(r)
        if env is None or pod is None or r.done:
            return
        image = pod["spec"]["containers"][0]["image"]
        if image in self.image_pull_backoff_images:
            self.fail(r, "ImagePullBackOff", f'Back-off pulling image "{image}"')
            return
        if image.startswith("unpullable/") or self.has_fault(pod, "unpullable"):
            await self._pull_fails(r, image)
            return
        n = next(self._ips)
        ip = f"10.244.{n // 250}.{n % 250 + 2}"
        if "mysql" in image or "mariadb" in image:
            await self._mysqld(r, env, ip)
            return
        r.workdir = tempfile.mkdtemp(prefix=f"k8s-sim-{r.name}-")
        restarts, last_state = 0, None
        while not r.done:
            code, reason, message, started_at = await self._run_container(r, pod, env, ip,
                                                                           restarts, last_state)
            if r.on_gone or r.done:
                return
            policy = pod["spec"].get("restartPolicy", "Always")
            state = podstatus.terminated_state(code, reason, started_at, message)
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                restarts, last_state = restarts + 1, state
                delay = min(self.restart_backoff_s * 2 ** (restarts - 1), 5.0)
                cname = pod["spec"]["containers"][0]["name"]
                self._write(r, lambda p: podstatus.waiting(
                    p, "CrashLoopBackOff", f"back-off {delay:g}s restarting failed container="
                    f"{cname} pod={r.name}_{r.namespace}({r.uid})", restarts, last_state))
                await asyncio.sleep(delay)
                continue
            r.done = r.final = True
            phase = "Succeeded" if code == 0 else "Failed"
            self._write(r, lambda p: podstatus.terminated(p, phase, state, restarts), final=True)

    async def _schedule(self, r: PodRuntime) -> bool:
        """Bind the pod to the node, once no ``unschedulable`` fault holds it back."""
        reported = False
        while not r.done:
            pod = self._pod(r)
            if pod is None:
                return False
            if not self.has_fault(pod, "unschedulable"):
                return self._write(r, lambda p: podstatus.scheduled(p, self.node_name))
            if not reported:
                why = ("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are "
                       "available: 1 No preemption victims found for incoming pod.")
                reported = self._write(r, lambda p: podstatus.unschedulable(p, why))
                self._warn(r, "FailedScheduling", why, "default-scheduler")
            await self._nap(r, 1.0)
        return False

    async def _pull_fails(self, r: PodRuntime, image: str) -> None:
        """ErrImagePull, then ImagePullBackOff for good; the pod stays Pending (its
        deadline, if any, still ends it)."""
        why = (f'failed to pull and unpack image "docker.io/{image}": failed to resolve '
               f'reference "docker.io/{image}": pull access denied, repository does not exist '
               'or may require authorization')
        self._write(r, lambda p: podstatus.waiting(p, "ErrImagePull", why))
        self._warn(r, "Failed", f'Failed to pull image "{image}": {why}')
        await self._nap(r, self.restart_backoff_s)
        self._write(r, lambda p: podstatus.waiting(
            p, "ImagePullBackOff", f'Back-off pulling image "{image}"'))
        self._warn(r, "BackOff", f'Back-off pulling image "{image}"')
        r.done = True  # nothing more happens by itself

    async def _mysqld(self, r: PodRuntime, env: Dict[str, str], ip: str) -> None:
        """A fake mysqld: up after ``mysql_ready_delay`` with the credentials of ``env``,
        until stopped; a ``crashloop`` (``oomkilled``) fault makes it exit (be killed) at once,
        and restart."""
        restarts, last_state = 0, None
        while not r.done:
            started_at = time.time()
            r.started = True
            self._write(r, lambda p: podstatus.running(p, ip, started_at, False, restarts,
                                                       last_state))
            if not self._crashes(r):
                await self._nap(r, self.mysql_ready_delay)
                if r.done or self._crashes(r):
                    continue
                r.mysql_env = env
                self._write(r, lambda p: podstatus.running(p, ip, started_at, True, restarts,
                                                           last_state))
                while not r.done and not self._crashes(r):
                    await self._nap(r, 3600)
                r.mysql_env = None
                if r.done:
                    return
            restarts += 1
            last_state = podstatus.terminated_state(*self._crashes(r), started_at)
            delay = min(self.restart_backoff_s * 2 ** (restarts - 1), 5.0)
            self._write(r, lambda p: podstatus.waiting(
                p, "CrashLoopBackOff", f"back-off {delay:g}s restarting failed container="
                f"mysql pod={r.name}_{r.namespace}({r.uid})", restarts, last_state))
            self._warn(r, "BackOff", "Back-off restarting failed container mysql in pod "
                       f"{r.name}_{r.namespace}({r.uid})")
            await self._nap(r, delay)

    def _crashes(self, r: PodRuntime) -> Optional[tuple]:
        """(exit code, reason) with which a fake mysqld dies now, if a fault says so."""
        pod = self._pod(r)
        if self.has_fault(pod, "oomkilled"):
            return 137, "OOMKilled"
        return (1, "Error") if self.has_fault(pod, "crashloop") else None

    async def _run_container(self, r: PodRuntime, pod: Dict[str, Any], env: Dict[str, str],
                             ip: str, restarts: int, last_state: Optional[dict]) -> tuple:
        container = pod["spec"]["containers"][0]
        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        started_at = time.time()
        if not argv:  # the image's own entrypoint: a server that runs until stopped
            r.started = True
            self._write(r, lambda p: podstatus.running(p, ip, started_at, True, restarts,
                                                       last_state))
            await r.stop.wait()
            return (*(r.kill_reason or (137, "Error", None)), started_at)
        try:
            r.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, cwd=r.workdir, env=env, start_new_session=True)
        except OSError as e:
            why = "executable file not found in $PATH" if isinstance(e, FileNotFoundError) \
                else e.strerror
            return (128, "StartError", "failed to create containerd task: unable to start "
                    f'container process: exec: "{argv[0]}": {why}', None)
        self.spawned.append(r.proc.pid)
        if r.done:  # stopped while the process was being spawned
            self._kill(r, signal.SIGKILL, keep_state=True)
        r.started = True
        self._write(r, lambda p: podstatus.running(p, ip, started_at, True, restarts, last_state))
        reader = asyncio.ensure_future(pump(r.proc.stdout, r.log))
        rc = await r.proc.wait()
        self._kill(r, signal.SIGKILL, keep_state=True)  # the container's other processes die too
        try:
            await asyncio.wait_for(reader, 2.0)
        except asyncio.TimeoutError:
            reader.cancel()
        r.proc = None
        code = rc if rc >= 0 else 128 - rc
        if r.kill_reason:
            return (*r.kill_reason, started_at)
        return (code, "Completed" if code == 0 else "Error", None, started_at)

    async def _resolve_env(self, r: PodRuntime) -> Optional[Dict[str, str]]:
        """The container's environment; waits in CreateContainerConfigError while a
        referenced Secret or key is missing, as the kubelet retries."""
        reported = None
        while not r.done:
            pod = self._pod(r)
            if pod is None:
                return None
            try:
                return container_environment(self.store, pod, self.node_name, self.port)
            except ConfigError as e:
                if str(e) != reported:
                    reported = message = str(e)
                    self._write(r, lambda p, m=message: podstatus.waiting(
                        p, "CreateContainerConfigError", m))
            await asyncio.sleep(0.1)
        return None

    # -- stopping
    def _kill(self, r: PodRuntime, sig: int, keep_state: bool = False) -> None:
        if not keep_state:
            r.done = True
            r.stop.set()
            if r.timer:
                r.timer.cancel()
        if r.proc is not None:
            try:
                os.killpg(r.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def fail(self, r: PodRuntime, reason: str, message: Optional[str] = None) -> None:
        """Fault injection and the active deadline: stop the pod with ``reason``."""
        if r.final or r.on_gone is not None:
            return
        pod = self._pod(r)
        started = r.started
        r.mysql_env = None
        if reason in WAITING_REASONS:
            r.done = True
            r.stop.set()
            self._kill(r, signal.SIGKILL, keep_state=True)  # the deadline still runs

            def change(p):
                p["status"]["phase"] = "Pending" if reason != "CrashLoopBackOff" or not started \
                    else "Running"
                podstatus.waiting(p, reason, message)
            self._write(r, change, final=True)
            return
        code = 137 if reason in POD_LEVEL_REASONS + ("OOMKilled",) else 1
        container_reason = "Error" if reason in POD_LEVEL_REASONS else reason
        r.kill_reason = (code, container_reason, None if reason in POD_LEVEL_REASONS else message)
        r.final = True
        self._kill(r, signal.SIGKILL)
        pod_reason = reason if reason in POD_LEVEL_REASONS else None
        if reason == "Evicted":
            self._warn(r, "Evicted", message or reason)
        start = time.time() if started else None
        state = podstatus.terminated_state(code, container_reason, start, r.kill_reason[2]) \
            if started or pod_reason is None else podstatus.container_state(pod) \
            or {"waiting": {"reason": "ContainerCreating"}}
        if pod is not None:
            self._write(r, lambda p: podstatus.terminated(p, "Failed", state, 0, pod_reason,
                                                          message), final=True)

    def terminate(self, namespace: str, name: str, grace: float,
                  on_gone: Callable[[], None]) -> bool:
        """Graceful deletion; True when the caller must wait for ``on_gone``."""
        r = self.runtime(namespace, name)
        if r is None or r.final or r.on_gone is not None:
            return False
        grace = min(grace, self.max_grace_s)
        if r.mysql_env is not None or (r.started and r.proc is None and not r.done):
            # a fake mysqld (or a server without a process) stops after mysql_shutdown_s
            r.on_gone, r.done = on_gone, True
            stop_after = min(grace, self.mysql_shutdown_s if r.mysql_env is not None else 0.0)
            asyncio.get_running_loop().call_later(stop_after, r.stop.set)
            return True
        if r.proc is None or r.done:
            return False
        r.on_gone = on_gone
        r.done = True
        self._kill(r, signal.SIGTERM, keep_state=True)
        asyncio.get_running_loop().call_later(grace, self._kill, r, signal.SIGKILL, True)
        return True

    async def shutdown(self, timeout: float = 5.0) -> None:
        for r in list(self.pods.values()):
            self._kill(r, signal.SIGKILL)
        tasks = [r.task for r in self.pods.values() if r.task and not r.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self.pods.clear()
