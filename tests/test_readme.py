"""Every shell command of README.md is run, as the README says, in a fresh directory
(issue 13, item 9): the certificates made by gen_cert.sh, the server started with the
README's flags, the MySQL provisioner's command against the test MariaDB, the user's
environment file, the client CLI, curl, the Jobs walk-through; and its Python snippets.

The README's ```bash blocks are read from the file, split into commands (backslash
continuations joined, here-documents kept whole), and each command is either run, or named
in SKIPPED with the reason it cannot run here. A command in neither fails the test, so a
new README command needs a runner or a reason. The two quick-start commands are excepted.

What a test environment cannot take literally is adapted, each adaptation named in
ADAPTATIONS (``apply``): ports (another server on this machine may hold 50052/50051), the
placeholders a reader fills in (HOST, TOKEN, ``{path to your ca.crt file}``, ``Xq…``), the
MySQL server (the README's is the maintainer's; here the test MariaDB).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from conftest import ROOT, client_context, request, wait_until

README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # sqlflow_playground, gen_cert.sh and python live here

# Commands that cannot run in a test, each with why (regular expressions on the command).
SKIPPED = {
    r"^pip3? install ": "installs packages from PyPI into the user's own Python: needs the "
    "network and changes the machine; here the packages are installed by the test "
    "environment (test_the_users_install_line_installs_the_magic checks what it names)",
    r"^jupyter notebook$": "starts an interactive Jupyter server in a browser; the magic in "
    "a real kernel is tested by tests/test_notebook.py and tests/test_magic.py",
}
# How the test adapts a command, and why: (pattern, replacement or callable, reason).
ADAPTATIONS = [
    (r"--port=50052", "--port=0", "the port is free by construction (another server on "
     "this machine may hold 50052); the gRPC door is off (SQLFLOW_PLAYGROUND_GRPC_PORT=0 "
     "in the environment) for the same reason"),
    (r"HOST:50052|\{playground server address\}:50052", "localhost:{port}",
     "the reader's server name and port: this test's server"),
    (r"\{playground server address\}", "localhost", "the reader's server name"),
    (r"mysql://admin:PASSWORD@db\.internal:3306", "{mariadb}",
     "the maintainer's MySQL server: the test MariaDB (root, no password)"),
]

# Added to the README's server command: the user section's `client run process` example
# needs a server that allows the process task type, which is off unless enabled (the
# README says so under "What a tenant can and cannot do").
EXTRA_SERVER_FLAGS = " --enable_process_jobs"

ENV = {k: v for k, v in os.environ.items()
       if not k.startswith(("SQLFLOW_PLAYGROUND", "SQLFLOW_JUPYTER", "SQLFLOW_USER",
                            "KEY_STORE"))}
ENV.update(PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1",
           SQLFLOW_PLAYGROUND_GRPC_PORT="0")


# -- reading the README -----------------------------------------------------------------

def sections(text: str) -> List[Tuple[str, str]]:
    """(heading, body) of every ##/### section, in order."""
    parts = re.split(r"^(#{2,3} .*)$", text, flags=re.M)
    return [(parts[i].lstrip("# ").strip(), parts[i + 1]) for i in range(1, len(parts), 2)]


def blocks(body: str, language: str) -> List[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", body, flags=re.M | re.S)


def commands(block: str) -> List[str]:
    """A block's commands: comments and blank lines dropped, continuations joined,
    here-documents kept with their command."""
    out, lines, i = [], block.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line = "\n".join([line, *body, heredoc.group(1)])
        out.append(re.sub(r"\s+#(?!!).*$", "", line) if "\n" not in line else line)
    return out


def readme() -> Dict[str, str]:
    return dict(sections(README.read_text(encoding="utf-8")))


def apply(command: str, **values: str) -> str:
    """``command`` with every adaptation whose values are known made."""
    for pattern, replacement, _why in ADAPTATIONS:
        def sub(match, replacement=replacement):
            try:
                return replacement.format(**values)
            except KeyError:
                return match.group(0)
        command = re.sub(pattern, sub, command)
    return command


def skipped(command: str) -> Optional[str]:
    for pattern, reason in SKIPPED.items():
        if re.search(pattern, command):
            return reason
    return None


class Shell:
    """Runs commands with bash in ``cwd``, keeping the variables they set (``C=…``,
    ``export X=…``) for the commands after them, as one terminal session would."""

    def __init__(self, cwd: Path, env: Dict[str, str]):
        self.cwd, self.env, self.prelude = cwd, dict(env), []

    def run(self, command: str, check: bool = True, timeout: float = 120):
        assignments = re.fullmatch(r"(?:export )?[A-Za-z_]\w*=\S.*", command) \
            and "$(" not in command
        script = "\n".join(self.prelude + [command])
        done = subprocess.run(["bash", "-ec", script], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, (command, done.stdout, done.stderr)
        if assignments:
            self.prelude.append(command)
        return done


# -- the walk-through -------------------------------------------------------------------

class Walk:
    """What the README's commands made so far: the directory, the server, its port."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.shell = Shell(tmp, ENV)
        self.server: Optional[subprocess.Popen] = None
        self.port = 0
        self.ran: List[str] = []
        self.skips: List[Tuple[str, str]] = []

    def run_all(self, cmds: List[str], runner) -> None:
        for command in cmds:
            reason = skipped(command)
            if reason:
                self.skips.append((command, reason))
                continue
            runner(command)
            self.ran.append(command)


def start_server(command: str, cwd: Path, env: Dict[str, str]) -> Tuple[subprocess.Popen, int]:
    log = cwd / f"server-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", "exec " + command], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    assert wait_until(lambda: "serving https on" in log.read_text() or
                      proc.poll() is not None, 60), log.read_text()
    found = re.search(r"serving https on [^:]+:(\d+)", log.read_text())
    assert found, log.read_text()
    return proc, int(found.group(1))


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    w = Walk(tmp_path_factory.mktemp("readme"))
    yield w
    stop(w.server)


def test_quick_start_is_the_two_excepted_commands():
    [section] = [body for heading, body in sections(README.read_text()) if
                 heading == "Quick start"]
    cmds = [c for b in blocks(section, "bash") for c in commands(b)]
    assert len(cmds) == 2 and all(c.startswith("python3 -m venv .venv") for c in cmds), cmds


def test_every_bash_command_has_a_runner_here_or_a_reason():
    """A new ```bash block in a section this test does not walk fails here."""
    walked = {"Quick start", "Certificates", "Running the server", "The MySQL provisioner",
              "For users", "Jobs", "A certificate for your browser"}
    for heading, body in sections(README.read_text()):
        if blocks(body, "bash"):
            assert heading in walked, f"README section {heading!r} has a ```bash block " \
                "that tests/test_readme.py does not run: add it, or a reason in SKIPPED"


def test_certificates(walk):
    ks = walk.tmp / "key_store"
    checks = {
        "mkdir key_store": lambda out: ks.is_dir(),
        "gen_cert.sh server": lambda out: (ks / "server" / "server.crt").is_file()
        and (ks / "ca" / "ca.crt").is_file(),
        "gen_cert.sh alice": lambda out: (ks / "alice" / "alice.key").is_file(),
        "gen_cert.sh --frontend hub": lambda out: "OU = frontend" in openssl_subject(
            ks / "hub" / "hub.crt") or "OU=frontend" in openssl_subject(ks / "hub" / "hub.crt"),
        "gen_cert.sh --force --san DNS:playground.example.com server": lambda out: all(
            name in openssl_text(ks / "server" / "server.crt") for name in
            ("DNS:playground.example.com", "DNS:localhost", "IP Address:127.0.0.1")),
        "gen_cert.sh --rsa --days 90 bob": lambda out: "rsaEncryption" in openssl_text(
            ks / "bob" / "bob.crt"),
        "gen_cert.sh revoke alice": lambda out: "HUP" in out and (ks / "ca" / "crl.pem")
        .is_file(),
        "gen_cert.sh list": lambda out: all(name in out for name in
                                            ("server", "hub", "bob", "alice"))
        and re.search(r"alice.*revoked", out),
    }
    cmds = [c for b in blocks(readme()["Certificates"], "bash") for c in commands(b)]
    assert set(cmds) == set(checks), "the README's certificate commands changed: " \
        f"{sorted(set(cmds) ^ set(checks))}"

    def run(command):
        done = walk.shell.run(command)
        assert checks[command](done.stdout + done.stderr), (command, done.stdout, done.stderr)
    walk.run_all(cmds, run)


def openssl_text(path: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout


def openssl_subject(path: Path) -> str:
    return subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-subject"],
                          capture_output=True, text=True, check=True).stdout


def test_running_the_server(walk):
    if not (walk.tmp / "key_store" / "ca" / "crl.pem").exists():
        pytest.fail("needs test_certificates to have run first")
    # The user of the sections below is alice, whom the certificate walk-through revoked:
    # the maintainer issues her a new certificate (a revoked name is re-issued as is).
    walk.shell.run("gen_cert.sh alice")
    [command] = [c for b in blocks(readme()["Running the server"], "bash") for c in commands(b)]
    assert command.startswith("sqlflow_playground --port=50052 ")

    def run(command):
        walk.server, walk.port = start_server(apply(command) + EXTRA_SERVER_FLAGS, walk.tmp,
                                              walk.shell.env)
    walk.run_all([command], run)
    # alice's new certificate is accepted, and the CRL given with --crl is in force.
    ks = walk.tmp / "key_store"
    assert request(walk.port, client_context(ks, "alice"), "GET",
                   "/api/heart_beat").status == 200


def test_the_mysql_provisioner(walk, mariadb):
    assert walk.server is not None, "needs test_running_the_server first"
    [command] = [c for b in blocks(readme()["The MySQL provisioner"], "bash")
                 for c in commands(b)]
    [server_command] = [c for b in blocks(readme()["Running the server"], "bash")
                        for c in commands(b)]
    assert command.startswith("sqlflow_playground ... ")
    # `...` stands for the flags of "Running the server"; the MySQL server is the test's.
    full = apply(command.replace("sqlflow_playground ...", server_command, 1),
                 mariadb=mariadb)
    here = walk.tmp / "mysql_run"  # its own state directory
    here.mkdir()
    (here / "key_store").symlink_to(walk.tmp / "key_store")
    proc, port = start_server(full, here, walk.shell.env)
    try:
        alice = client_context(walk.tmp / "key_store", "alice")
        created = request(port, alice, "POST", "/api/create_db", {})
        assert created.status == 200, created.body
        ds = created.body["data_source"]
        assert "@tcp(mysql.playground.example.com:3306)/" in ds  # what users get...
        job = request(port, alice, "POST", "/api/jobs", {"task_type": "sql",
                                                         "spec": {"sql": "SELECT 1 AS one"}})
        token = job.body["token"]
        assert wait_until(lambda: request(port, alice, "GET", f"/api/jobs/{token}?wait=1")
                          .body["status"] in ("SUCCEEDED", "FAILED"), 60)
        body = request(port, alice, "GET", f"/api/jobs/{token}").body
        assert body["status"] == "SUCCEEDED", body  # ...while jobs use the DSN's host
        assert request(port, alice, "POST", "/api/delete_db", {}).body["released"] is True
    finally:
        stop(proc)
    walk.ran.append(command)


def user_files(walk) -> Path:
    """What the maintainer sends alice: ca.crt, alice.crt, alice.key, in her directory."""
    home = walk.tmp / "home"
    if not home.exists():
        home.mkdir()
        ks = walk.tmp / "key_store"
        for src in (ks / "ca" / "ca.crt", ks / "alice" / "alice.crt", ks / "alice" / "alice.key"):
            shutil.copy(src, home / src.name)
    return home


def test_for_users_environment_cli_and_curl(walk):
    assert walk.server is not None, "needs test_running_the_server first"
    home = user_files(walk)
    users = Shell(home, {**walk.shell.env, "HOME": str(home)})
    section = readme()["For users"]
    env_block, cli_block, curl_block = blocks(section, "bash")
    placeholders = {
        "{path to your ca.crt file}": str(home / "ca.crt"),
        "{path to your NAME.key file}": str(home / "alice.key"),
        "{path to your NAME.crt file}": str(home / "alice.crt"),
        "{your name, the NAME of your certificate}": "alice",
    }

    def run_env(command):
        for placeholder, value in placeholders.items():
            command = command.replace(placeholder, value)
        users.run(apply(command, port=str(walk.port)))
    walk.run_all(commands(env_block), run_env)
    env_file = home / ".sqlflow_playground.env"
    assert env_file.is_file() and "{" not in env_file.read_text()
    assert any("SQLFLOW_JUPYTER_ENV_PATH" in p for p in users.prelude)

    # The client CLI "with the same environment": the file above, through the variable.
    waiting = []

    def run_cli(command):
        if "TOKEN" in command:  # the reader's job: one that runs until cancelled
            token = users.run("sqlflow_playground client submit process -- "
                              "python -c 'import time; time.sleep(120)'").stdout.strip()
            waiting.append(token)
            command = command.replace("TOKEN", token)
        done = users.run(command)
        out = done.stdout + done.stderr
        if "create-db" in command:
            assert "sqlite:///" in out, out
        if "SELECT 1 AS one" in command:
            assert re.search(r"^one\s*$", done.stdout, re.M) and \
                re.search(r"^\s*1\s*$", done.stdout, re.M), out
            assert "SUCCEEDED" in done.stderr, out
        if "print(42)" in command:
            assert done.stdout == "42\n", out
        if "-o json jobs" in command:
            assert isinstance(json.loads(done.stdout)["jobs"], list), out
    walk.run_all(commands(cli_block), run_cli)
    [job] = [j for j in json.loads(users.run("sqlflow_playground client -o json jobs")
                                   .stdout)["jobs"] if j["token"] == waiting[0]]
    assert job["status"] == "CANCELLED"

    # curl, with the files the maintainer sent, in alice's directory.
    answers = []

    def run_curl(command):
        done = users.run(apply(command, port=str(walk.port)))
        if command.startswith("curl"):
            answers.append(json.loads(done.stdout))
    walk.run_all(commands(curl_block), run_curl)
    created, beat, user, deleted = answers
    assert created["user_id"] == "alice" and created["data_source"]
    assert beat["status"] == "ok" and user["user_id"] == "alice"
    assert deleted == {"user_id": "alice", "released": True}


def test_the_users_install_line_installs_the_magic():
    """The user section installs what `%load_ext sqlflow_playground.magic` loads."""
    section = readme()["For users"]
    assert "%load_ext sqlflow_playground.magic" in section
    installs = [c for b in blocks(section, "bash") for c in commands(b)
                if re.match(r"^pip3? install ", c)]
    assert installs, "the user section has no pip install line"
    dist = re.search(r'name="([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    names = {re.split(r"[<>=\[ @]", word)[0].lower().replace("_", "-")
             for c in installs for word in c.split()[2:]}
    dist = dist.lower().replace("_", "-")
    assert dist in names or any(n.startswith(dist + "-") and n.endswith(".whl")
                                for n in names), (
        f"no install line of the user section installs {dist} (the magic's package, by "
        f"name or as its wheel): "
        f"{installs}")


def test_jobs_walk_through(walk):
    assert walk.server is not None, "needs test_running_the_server first"
    home = user_files(walk)
    shell = Shell(home, walk.shell.env)
    # The section assumes alice has a database (the curl lines above released hers).
    shell.run(f"curl -s --cacert ca.crt --cert alice.crt --key alice.key -d '{{}}' "
              f"https://localhost:{walk.port}/api/create_db")
    [block] = blocks(readme()["Jobs"], "bash")
    state: Dict[str, str] = {}
    outputs = []

    def run(command):
        command = apply(command, port=str(walk.port))
        if "token" in state:
            command = command.replace("Xq…", state["token"])
        if "next" in state:
            command = command.replace("since=123", f"since={state['next']}")
        done = shell.run(command)
        if command.startswith("curl"):
            body = json.loads(done.stdout)
            outputs.append(body)
            state.setdefault("token", body.get("token", ""))
            if "next" in body:
                state["next"] = body["next"]
    walk.run_all(commands(block), run)
    submitted, first, since, cancelled = outputs
    assert submitted["status"] in ("PENDING", "RUNNING", "SUCCEEDED")
    assert first["token"] == since["token"] == cancelled["token"] == state["token"]
    # The long poll answered with news, the cursor went on from there; the rest follows.
    responses = first["responses"] + since["responses"]
    cursor, body = since["next"], since
    deadline = time.monotonic() + 60
    while not body["eof"] and time.monotonic() < deadline:
        body = json.loads(shell.run(f'curl $C "$S/api/jobs/{state["token"]}?since={cursor}'
                                    f'&wait=10"').stdout)
        responses += body["responses"]
        cursor = body["next"]
    assert body["status"] == "SUCCEEDED" and body["eof"] is True
    assert [r for r in responses if "head" in r or "row" in r] == [
        {"head": ["one"]}, {"row": [1]}, {"head": ["two"]}, {"row": [2]}]
    assert cancelled["status"] in ("SUCCEEDED", "CANCELLED")


def test_python_snippets_run_as_written(tmp_path):
    """Each ```python block, as a reader pastes it into a fresh interpreter."""
    snippets = [b for _, body in sections(README.read_text()) for b in blocks(body, "python")]
    assert snippets, "the README's Python snippets are gone?"
    for snippet in snippets:
        done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (snippet, done.stderr)
        assert done.stdout.strip(), snippet


def test_a_certificate_for_your_browser(walk):
    ks = walk.tmp / "key_store"
    if not (ks / "ca" / "ca.crt").exists():
        pytest.fail("needs test_certificates to have run first")

    def opens(bundle: Path, password: str) -> bool:
        return subprocess.run(["openssl", "pkcs12", "-in", str(bundle), "-noout",
                               "-passin", f"pass:{password}"], capture_output=True).returncode == 0

    checks = {
        "gen_cert.sh --p12 alice": lambda out: opens(
            ks / "alice" / "alice.p12", (ks / "alice" / "alice.p12.pass").read_text().strip()),
        "env P12_PASSWORD='choose one' gen_cert.sh --p12 --frontend ops": lambda out: opens(
            ks / "ops" / "ops.p12", "choose one") and not opens(ks / "ops" / "ops.p12", "x")
        and "OU" in openssl_subject(ks / "ops" / "ops.crt")
        and "frontend" in openssl_subject(ks / "ops" / "ops.crt"),
    }
    cmds = [c for b in blocks(readme()["A certificate for your browser"], "bash")
            for c in commands(b)]
    assert set(cmds) == set(checks), sorted(set(cmds) ^ set(checks))

    def run(command):
        done = walk.shell.run(command)
        assert checks[command](done.stdout + done.stderr), (command, done.stdout, done.stderr)
    walk.run_all(cmds, run)


def test_every_command_was_run_or_skipped_with_a_reason(walk):
    """Run last (file order): nothing of the walked sections was left out."""
    text = readme()
    every = [c for heading in ("Certificates", "Running the server", "The MySQL provisioner",
                               "For users", "Jobs", "A certificate for your browser")
             for b in blocks(text[heading], "bash") for c in commands(b)]
    done = set(walk.ran) | {c for c, _ in walk.skips}
    assert [c for c in every if c not in done] == []
    assert {c for c, _ in walk.skips} == {c for c in every if skipped(c)}
