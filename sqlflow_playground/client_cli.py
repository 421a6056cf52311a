"""``sqlflow_playground client [CONNECTION] [--output text|json] COMMAND``: the playground
from a terminal or a script, with the settings the notebook magic reads by default.

A process job's command goes after ``--`` (``run process --follow -- prog arg --opt``: every
word after ``--`` is the command) or as ``--command-json '["prog", "arg"]'``. The older
``--command prog arg`` still takes every word after it, so it is refused when one of those
words is also an option of ``run``/``submit`` (``--follow``, ``-o``, …): the error says what
to write instead rather than handing the option to the program.

Exit codes: 0 success, 1 a server error or a job that did not succeed (``run``), 2 a usage
error, 130 interrupted (a job being followed is cancelled first)."""
import argparse
import json
import shlex
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from .client import Body, PlaygroundClient, PlaygroundClientError, provisioning_line

S = argparse.SUPPRESS


# -- rendering ----------------------------------------------------------------------

class Statements:
    """Groups a job's responses the way SQLFlow streams them: ``on_message(text)`` for
    each message, ``on_table(head, rows)`` once a statement's ``eoe`` arrives."""

    def __init__(self, on_message: Callable[[str], None],
                 on_table: Callable[[Sequence[str], List[Sequence[Any]]], None]):
        self.on_message, self.on_table = on_message, on_table
        self.head: Optional[Sequence[str]] = None
        self.rows: List[Sequence[Any]] = []

    def feed(self, response: Body) -> None:
        if "message" in response:
            self.flush()
            self.on_message(response["message"])
        elif "head" in response:
            self.flush()
            self.head = response["head"]
        elif "row" in response:
            self.rows.append(response["row"])
        elif response.get("eoe"):
            self.flush()

    def flush(self) -> None:
        """Hand over a table that is still open (a job that ended mid-statement)."""
        if self.head is not None or self.rows:
            head, rows, self.head, self.rows = self.head or [], self.rows, None, []
            self.on_table(head, rows)


def text_table(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned plain-text table; numeric columns are right-aligned, None is NULL."""
    width = max([len(head)] + [len(r) for r in rows])
    cell = lambda v: "NULL" if v is None else str(v).replace("\n", "\\n")  # noqa: E731
    table = [[cell(v) for v in line] + [""] * (width - len(line)) for line in [head, *rows]]
    widths = [max(len(line[i]) for line in table) for i in range(width)]
    values = [[r[i] for r in rows if i < len(r) and r[i] is not None] for i in range(width)]
    numeric = [bool(vs) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in vs) for vs in values]
    table.insert(1, ["-" * w for w in widths])
    return "\n".join("  ".join(c.rjust(w) if n else c.ljust(w)
                               for c, w, n in zip(line, widths, numeric)).rstrip()
                     for line in table)


def when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def records(items: List[Body], columns: Sequence[str]) -> str:
    rows = [[when(i.get(c)) if c.endswith("_at") else i.get(c) for c in columns] for i in items]
    return text_table([c.upper() for c in columns], rows)


def fields(body: Body) -> str:
    shown = {k: v for k, v in body.items() if not isinstance(v, (list, dict))}
    return "\n".join(f"{k + ':':<{max(map(len, shown)) + 1}} "
                     f"{when(v) if k.endswith('_at') else v}" for k, v in shown.items())


class Ticker:
    """``[RUNNING 12s]`` redrawn on stderr each second, only when stderr is a terminal."""

    def __init__(self, status: str = "PENDING", stream: Any = None):
        self.stream, self.status, self.started = stream or sys.stderr, status, time.monotonic()
        self.lock, self.done = threading.Lock(), threading.Event()
        if self.stream.isatty():
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.done.wait(1 - (time.monotonic() - self.started) % 1):
            with self.lock:
                if not self.done.is_set():
                    elapsed = time.monotonic() - self.started
                    self.stream.write(f"\r\033[K[{self.status} {elapsed:.0f}s]")
                    self.stream.flush()

    def _clear(self) -> None:
        if self.stream.isatty():
            self.stream.write("\r\033[K")
            self.stream.flush()

    def print(self, text: str) -> None:
        """Print a line of output on stdout, taking the indicator out of its way."""
        with self.lock:
            self._clear()
            print(text, flush=True)

    def stop(self) -> None:
        self.done.set()
        with self.lock:
            self._clear()


class Provisioning:
    """create_db's progress on stderr: one line redrawn in place on a terminal; elsewhere
    a line when the phase changes, and every ``every`` seconds."""

    def __init__(self, stream: Any = None, every: float = 10.0):
        self.stream, self.every = stream or sys.stderr, every
        self.phase: Any = ()  # none printed yet
        self.printed_at, self.drawn = 0.0, False

    def __call__(self, body: Body) -> None:
        line = provisioning_line(body)
        if self.stream.isatty():
            self.stream.write(f"\r\033[K{line}")
            self.drawn = True
        elif body.get("phase") != self.phase or body["elapsed_s"] >= self.printed_at + self.every:
            self.phase, self.printed_at = body.get("phase"), body["elapsed_s"]
            self.stream.write(line + "\n")
        self.stream.flush()

    def stop(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def create_db(client: PlaygroundClient, args: argparse.Namespace) -> Body:
    progress = Provisioning()
    try:
        return client.create_db(timeout=args.timeout, on_progress=progress)
    finally:
        progress.stop()


# -- commands -----------------------------------------------------------------------

def spec_of(args: argparse.Namespace) -> Any:
    if args.sql is not None:
        return {"sql": args.sql}
    if args.command is not None:
        return {"command": args.command}
    try:
        return json.loads(args.spec)
    except ValueError as e:
        raise ValueError(f"--spec is not valid JSON: {e}") from None


JOB_COMMANDS = ("run", "submit")
# Options of the top level that take a value (so that value is not the sub-command).
VALUE_OPTIONS = ("--server", "--ca", "--cert", "--key", "--user", "--output", "-o")


def command_index(argv: Sequence[str]) -> Optional[int]:
    """Where the sub-command is in argv (skipping the connection options before it)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return None
        if not word.startswith("-"):
            return i
        long_name = word.startswith("--") and "=" not in word
        if word == "-o" or long_name and any(o.startswith(word) for o in VALUE_OPTIONS
                                             if o.startswith("--")):
            i += 1  # its value
        i += 1
    return None


class Split(NamedTuple):
    words: List[str]                 # what argparse parses
    form: Optional[str] = None       # "--" or "--command": how the command was given
    before: Sequence[str] = ()       # the words before that marker
    command: Optional[List[str]] = None  # the words after it


def split_argv(argv: List[str]) -> Split:
    """``run TASK [options] -- PROG ARG…`` (or the older ``--command PROG ARG…``): every
    word after the first ``--`` or ``--command`` is the command, cut off before argparse."""
    at = command_index(argv)
    if at is None or argv[at] not in JOB_COMMANDS:
        return Split(argv)
    for i in range(at + 1, len(argv)):
        if argv[i] in ("--", "--command"):
            return Split(argv[:i], argv[i], argv[:i], argv[i + 1:])
        if argv[i].startswith("--command="):
            return Split(argv[:i], "--command", argv[:i],
                         [argv[i].split("=", 1)[1]] + argv[i + 1:])
    return Split(argv)


def takes_value(parser: argparse.ArgumentParser, option: str) -> bool:
    action = parser._option_string_actions.get(option)  # noqa: SLF001
    return action is not None and action.nargs != 0


def cli_option(word: str, parser: argparse.ArgumentParser) -> Optional[str]:
    """The option of `parser` that `word` would be if argparse read it, else None: an
    exact option, ``--opt=value``, an abbreviation (``--fol``), or ``-fVALUE``/``-oVALUE``."""
    options = parser._option_string_actions  # noqa: SLF001
    if word.startswith("--") and word != "--":
        name = word.split("=", 1)[0]
        if name in options:
            return name
        matches = [o for o in options if o.startswith("--") and o.startswith(name)]
        return matches[0] if len(matches) == 1 else (name if matches else None)
    if word.startswith("-") and len(word) > 1 and word[:2] in options:
        return word[:2]
    return None


def ambiguous_command(split: Split, args: argparse.Namespace,
                      parser: argparse.ArgumentParser) -> Optional[str]:
    """Why ``--command`` … is ambiguous, and what to write instead; None if it is not."""
    words = split.command or []
    clashing = [w for w in words if cli_option(w, parser)]
    if not clashing:
        return None
    moved: List[str] = []
    program: List[str] = []
    i = 0
    while i < len(words):
        option = cli_option(words[i], parser)
        if option:
            moved.append(words[i])
            inline = "=" in words[i] or not words[i].startswith("--") and len(words[i]) > 2
            if takes_value(parser, option) and not inline and i + 1 < len(words):
                moved.append(words[i + 1])
                i += 1
        else:
            program.append(words[i])
        i += 1
    prog, before = "sqlflow_playground client", list(split.before)
    named = ", ".join(f"`{w}`" for w in clashing)
    return (f"ambiguous: {named} after --command could be meant for `{args.cmd}` or for "
            f"your program (--command hands every word after it to the program). Put the "
            f"command after `--`, with the options of `{args.cmd}` before it:\n"
            f"  {prog} {shlex.join(before + moved + ['--'] + program)}\n"
            f"or, if {named} {'is' if len(clashing) == 1 else 'are'} for the program, "
            f"give the command as JSON:\n"
            f"  {prog} {shlex.join(before + ['--command-json', json.dumps(words)])}")


def check_job_args(split: Split, args: argparse.Namespace,
                   parser: argparse.ArgumentParser) -> Optional[str]:
    """Settle where a run/submit's spec comes from (setting args.command for a process
    command); an error message if it cannot be settled."""
    given = [name for name, value in (("--spec", args.spec), ("--sql", args.sql),
                                       ("--command-json", args.command_json))
             if value is not None] + ([f"{split.form} PROG"] if split.form else [])
    if not given:
        return ("give the job: -- PROG [ARG ...] (a process command), --command-json "
                "'[\"PROG\", \"ARG\"]', --sql SQL or --spec JSON")
    if len(given) > 1:
        return f"give the job one way only, not {' and '.join(given)}"
    if split.form:
        if not split.command:
            return (f"nothing after `{split.form}`: write the command there, "
                    "e.g. -- python -c 'print(42)'")
        args.command = split.command
        return ambiguous_command(split, args, parser) if split.form == "--command" else None
    if args.command_json is not None:
        try:
            command = json.loads(args.command_json)
        except ValueError as e:
            return f"--command-json is not valid JSON: {e}"
        if not (isinstance(command, list) and command
                and all(isinstance(w, str) for w in command)):
            return ("--command-json must be a non-empty JSON list of strings, e.g. "
                    "'[\"python\", \"-c\", \"print(42)\"]'")
        args.command = command
    return None


def run(client: PlaygroundClient, args: argparse.Namespace, as_json: bool) -> int:
    submitted = client.submit(args.task_type, spec_of(args), args.task_version)
    token = submitted["token"]
    if not as_json:
        print(f"submitted job {token}", file=sys.stderr, flush=True)
    ticker = Ticker(submitted["status"])
    statements = Statements(ticker.print, lambda h, r: ticker.print(text_table(h, r)))
    follow = args.follow and not as_json
    try:
        result = client.follow(token, on_response=statements.feed if follow else None,
                               on_status=lambda body: setattr(ticker, "status", body["status"]))
    except KeyboardInterrupt:
        ticker.stop()
        print("cancelled", file=sys.stderr, flush=True)
        return 130
    ticker.stop()
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        if not follow:
            for response in result["responses"]:
                statements.feed(response)
        statements.flush()
        message = result.get("message")
        print(f"{result['status']}: {message}" if message else result["status"], file=sys.stderr)
    return 0 if result["status"] == "SUCCEEDED" else 1


def show(body: Body, args: argparse.Namespace, as_json: bool) -> int:
    """Print one answer: JSON as the server sent it, or a text view per command."""
    if as_json:
        print(json.dumps(body, indent=2))
    elif args.cmd in ("users", "jobs", "plugins"):
        columns = {"users": ("user_id", "provisioner", "status", "created_at", "last_seen_at"),
                   "jobs": ("token", "task_type", "status", "created_at", "message"),
                   "plugins": ("task_type", "version", "needs_database", "description")}
        print(records(body[args.cmd], columns[args.cmd]))
    elif args.cmd == "submit":
        print(body["token"])
    elif args.cmd == "fetch":
        statements = Statements(print, lambda h, r: print(text_table(h, r)))
        for response in body["responses"]:
            statements.feed(response)
        statements.flush()
        eof = " eof" if body["eof"] else ""
        print(f"{body['status']}: next={body['next']}{eof}", file=sys.stderr)
    else:
        print(fields(body))
        if body.get("jobs"):
            print("\n" + records(body["jobs"], ("token", "task_type", "status", "created_at")))
    return 0


COMMANDS: Dict[str, Callable[[PlaygroundClient, argparse.Namespace], Body]] = {
    "create-db": create_db,
    "heartbeat": lambda c, a: c.heart_beat(),
    "delete-db": lambda c, a: c.delete_db(),
    "users": lambda c, a: c.users(),
    "user": lambda c, a: c.user(a.user_id),
    "jobs": lambda c, a: c.jobs(status=a.status),
    "submit": lambda c, a: c.submit(a.task_type, spec_of(a), a.task_version),
    "fetch": lambda c, a: c.fetch(a.token, a.since, a.wait),
    "cancel": lambda c, a: c.cancel(a.token),
    "plugins": lambda c, a: c.plugins(),
}


def build_parser() -> argparse.ArgumentParser:
    # Connection options are accepted before and after the command (defaults: SUPPRESS).
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (default: the environment the magic reads)")
    group.add_argument("--server", default=S, help="https://HOST:PORT "
                       "(SQLFLOW_PLAYGROUND_SERVER, or SQLFLOW_PLAYGROUND_SERVRE)")
    group.add_argument("--ca", default=S, help="CA certificate (SQLFLOW_PLAYGROUND_SERVER_CA)")
    group.add_argument("--cert", default=S,
                       help="your certificate (SQLFLOW_PLAYGROUND_CLIENT_CERT)")
    group.add_argument("--key", default=S, help="your key (SQLFLOW_PLAYGROUND_CLIENT_KEY)")
    group.add_argument("--user", default=S, help="act for this user id "
                       "(the variable named by SQLFLOW_PLAYGROUND_USER_ID_ENV)")
    group.add_argument("--check-hostname", action="store_true", default=S,
                       help="the server's certificate must name the host of --server "
                            "(SQLFLOW_PLAYGROUND_CHECK_HOSTNAME=1)")
    common.add_argument("--output", "-o", choices=("text", "json"), default=S,
                        help="json: the server's answer, for scripts (default: text)")
    parser = argparse.ArgumentParser(
        prog="sqlflow_playground client", parents=[common],
        description="The playground from a terminal or a script. Connection settings "
                    "default to the environment (and SQLFLOW_JUPYTER_ENV_PATH file) that "
                    "the %%sqlflow notebook magic reads.",
        epilog="exit codes: 0 success; 1 server error, or `run` of a job that did not "
               "succeed; 2 usage error; 130 interrupted (a job being run is cancelled)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    parser.commands = {}  # type: ignore[attr-defined]

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    add("create-db", "create your database (idempotent) and show its data source, "
        "showing progress while it is provisioned").add_argument(
        "--timeout", type=float, metavar="SECONDS",
        help="stop waiting after this long (default: the provision timeout the server "
             "states, plus 30 s); the server carries on either way")
    add("heartbeat", "tell the server you are still there")
    add("delete-db", "release your database now")
    add("users", "list all users (frontend certificates only)")
    add("user", "show a user's database and jobs").add_argument("user_id", nargs="?",
                                                               metavar="USER")
    add("jobs", "list your jobs").add_argument("--status", help="e.g. RUNNING")
    add("plugins", "list the task types the server offers")
    for name, text in (("submit", "submit a job and print its token"),
                       ("run", "submit a job and wait for it; exit 0 if it SUCCEEDED")):
        example = f"{name} process{' --follow' if name == 'run' else ''}"
        p = sub.add_parser(
            name, parents=[common], help=text, description=text,
            usage=f"%(prog)s TASK_TYPE [--task-version V]{' [--follow]' if name == 'run' else ''}"
                  " [connection options]\n"
                  "         (--sql SQL | --spec JSON | --command-json JSON | -- PROG [ARG ...])",
            epilog="A process command goes last, after `--`: every word after it is the "
                   f"command, options included (`{example} -- python -c 'print(42)' "
                   "--verbose`). Or give it as --command-json "
                   "'[\"python\", \"-c\", \"print(42)\"]'.")
        parser.commands[name] = p
        p.add_argument("task_type", metavar="TASK_TYPE", help="sql, process, pod, …")
        p.add_argument("--task-version", help="the task type's version (default: newest)")
        if name == "run":
            p.add_argument("--follow", "-f", action="store_true",
                           help="print messages and tables as they arrive")
        spec = p.add_mutually_exclusive_group()
        spec.add_argument("--spec", help="the job's spec as JSON")
        spec.add_argument("--sql", help='shorthand for --spec \'{"sql": SQL}\'')
        spec.add_argument("--command-json", metavar="JSON",
                          help='a process command as a JSON list: \'["PROG", "ARG"]\'')
        spec.add_argument("--command", nargs=argparse.REMAINDER, metavar="ARG",
                          help="older form of `-- PROG [ARG ...]`; refused when a word after "
                               "it is also an option here (e.g. --follow)")
    p = add("fetch", "print a job's output since a cursor")
    p.add_argument("token", metavar="TOKEN")
    p.add_argument("--since", default="", metavar="CURSOR", help="the `next` of a fetch")
    p.add_argument("--wait", type=float, default=0, help="long-poll up to this many seconds")
    add("cancel", "cancel a job").add_argument("token", metavar="TOKEN")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    split = split_argv(argv)
    args = parser.parse_args(split.words)
    if args.cmd in JOB_COMMANDS:
        job_parser = parser.commands[args.cmd]  # type: ignore[attr-defined]
        problem = check_job_args(split, args, job_parser)
        if problem:
            job_parser.error(problem)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    as_json = getattr(args, "output", "text") == "json"
    settings = {k: getattr(args, k, None) for k in ("server", "ca", "cert", "key",
                                                    "check_hostname")}
    try:
        client = PlaygroundClient.from_env(user_id=getattr(args, "user", None), **settings)
    except PlaygroundClientError as e:  # a certificate that cannot work: say why, no usage
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:
        parser.error(str(e))
    try:
        if args.cmd == "run":
            code = run(client, args, as_json)
        else:
            code = show(COMMANDS[args.cmd](client, args), args, as_json)
    except ValueError as e:
        parser.error(str(e))
    except PlaygroundClientError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        client.close()
    sys.exit(code)
