"""Parent side of the benchmark's servers: certificates, CPU pinning, start/stop, CPU time.

Each server is a child process running ``_server_entry.py``; it binds an ephemeral port
on 127.0.0.1 and reports it on stdout as ``READY <port>``. Its stderr goes to a log file.
Children get SIGKILL if the benchmark dies (PR_SET_PDEATHSIG), and ``stop()`` always
ends them, so no server outlives a run.
"""
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
GEN_CERT = ROOT / "scripts" / "gen_cert.sh"
ENTRY = BENCH_DIR / "_server_entry.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class KeyStore:
    """Certificates made by scripts/gen_cert.sh: ``server``, client ``bench``, frontend ``front``."""

    def __init__(self, directory: Path):
        self.dir = directory
        env = {**os.environ, "KEY_STORE": str(directory)}
        for args in (["server"], ["bench"], ["--frontend", "front"]):
            subprocess.run(["bash", str(GEN_CERT), *args], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        self.ca = str(directory / "ca" / "ca.crt")

    def crt(self, name: str) -> str:
        return str(self.dir / name / f"{name}.crt")

    def key(self, name: str) -> str:
        return str(self.dir / name / f"{name}.key")


# Taken at import, before the benchmark pins itself to the client core.
_USABLE_CORES = sorted(os.sched_getaffinity(0))


def usable_cores() -> List[int]:
    return list(_USABLE_CORES)


def pin_command(core: Optional[int]) -> List[str]:
    """``taskset -c CORE`` (which execs, so the child's pid is the server's) when possible."""
    if core is None or core not in usable_cores() or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(core)]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    # After "pid (comm)": fields[0] is state (field 3), utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def busy_seconds(cores: List[int]) -> float:
    """CPU time the given cores spent on anything but idling (incl. steal), from /proc/stat."""
    busy = 0
    with open("/proc/stat") as fh:
        for line in fh:
            name, *ticks = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
                busy += user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS


class ServerProcess:
    """One server child. ``start()`` returns its port; ``stop()`` is safe to call twice."""

    def __init__(self, kind: str, keys: KeyStore, workdir: Path, core: Optional[int],
                 slow_s: float = 5.0, profile_to: Optional[Path] = None,
                 extra_args: Sequence[str] = ()):
        self.kind = kind
        self.extra_args = list(extra_args)  # more _server_entry.py flags, e.g. --grpc_port
        self.keys = keys
        self.workdir = workdir / kind
        self.core = core
        self.slow_s = slow_s
        self.profile_to = profile_to
        self.log_path = self.workdir / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self, timeout_s: float = 30.0) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = pin_command(self.core) + [
            sys.executable, str(ENTRY), self.kind,
            "--ca_crt", self.keys.ca,
            "--server_crt", self.keys.crt("server"), "--server_key", self.keys.key("server"),
            "--state_dir", str(self.workdir / "state"), "--slow_s", str(self.slow_s),
            *self.extra_args]
        env = dict(os.environ)
        if self.profile_to:
            env["BENCH_PROFILE"] = str(self.profile_to)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env,
                                         cwd=str(self.workdir), preexec_fn=_die_with_parent)
        self.port = self._await_ready(timeout_s)
        return self.port

    def _await_ready(self, timeout_s: float) -> int:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        out = b""
        while b"\n" not in out:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server {self.kind!r} did not start; its log:\n{self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    continue  # EOF: poll() notices the exit on the next round
                out += chunk
        line = out.split(b"\n", 1)[0].decode()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"server {self.kind!r} printed {line!r} instead of READY <port>")
        return int(line.split()[1])

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def dump_stacks(self) -> None:
        """Ask the server to write all its threads' stacks to its log (faulthandler)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> Optional[int]:
        """SIGTERM (a graceful stop; the profile is written then), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        return proc.returncode
