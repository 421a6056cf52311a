"""The image build keeps keys and local state out, with either Docker builder (finding 8).

``docker build -f deploy/Dockerfile .`` (deploy/README.md): the context is the repository
root. The legacy builder reads only ``<context>/.dockerignore``; BuildKit reads
``<Dockerfile>.dockerignore`` next to the Dockerfile when there is one, else that same root
file. Patterns follow moby/patternmatcher: paths relative to the context, ``*`` and ``?``
within one path element, ``**`` across any number of them, ``!`` re-includes, the last
matching pattern wins, and an excluded directory excludes everything below it.
"""
import re
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MUST_STAY_OUT = ["key_store", "key_store/ca/ca.key", "key_store/server/server.key",
                 "deploy/key_store/ca/ca.key", "sqlflow_playground_state/store.db",
                 "tests/sqlflow_playground_state/x.db", ".venv/bin/python", ".git/config",
                 "sqlflow_playground/__pycache__/jobs.cpython-311.pyc"]
MUST_GO_IN = ["setup.py", "sqlflow_playground/server.py", "sqlflow_playground/plugins/pod.py",
              "README.md"]


def ignore_file(builder: str) -> Optional[Path]:
    """The ignore file ``builder`` reads for ``docker build -f deploy/Dockerfile .``."""
    beside = DOCKERFILE.parent / (DOCKERFILE.name + ".dockerignore")
    root = ROOT / ".dockerignore"
    candidates = [beside, root] if builder == "buildkit" else [root]
    return next((p for p in candidates if p.exists()), None)


def parse(path: Path) -> List[Tuple[bool, "re.Pattern[str]"]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = re.sub(r"/+", "/", pattern).strip("/")
        if pattern.startswith("./"):
            pattern = pattern[2:]
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def excluded(rules, path: str) -> bool:
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):  # an excluded parent directory takes its children
        prefix, verdict = "/".join(parts[:depth]), None
        for negate, regex in rules:
            if regex.match(prefix):
                verdict = not negate
        if verdict:
            return True
    return False


def test_the_dockerfile_is_built_from_the_repository_root():
    assert "docker build -f deploy/Dockerfile" in DOCKERFILE.read_text()
    assert "COPY . /src" in DOCKERFILE.read_text()


@pytest.mark.parametrize("builder", ["legacy", "buildkit"])
def test_keys_state_venv_and_git_stay_out_of_the_image(builder):
    path = ignore_file(builder)
    assert path is not None, f"the {builder} builder reads no ignore file: key_store/ is copied"
    rules = parse(path)
    leaked = [p for p in MUST_STAY_OUT if not excluded(rules, p)]
    assert leaked == [], f"{builder} ({path.relative_to(ROOT)}) copies {leaked}"
    missing = [p for p in MUST_GO_IN if excluded(rules, p)]
    assert missing == [], f"{builder} leaves out {missing}"


def test_both_builders_read_the_same_rules():
    assert ignore_file("legacy") == ignore_file("buildkit") == ROOT / ".dockerignore"


def test_the_matcher_is_honest():
    rules = parse_text("**/key_store\n!**/key_store/public.crt\n*.tmp\n")
    assert excluded(rules, "a/b/key_store/ca.key") and excluded(rules, "key_store")
    assert not excluded(rules, "keys_store/x") and not excluded(rules, "a/b.tmp")
    assert excluded(rules, "b.tmp")


def parse_text(text: str):
    tmp = ROOT / ".pytest_cache" / "dockerignore-selftest"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(text)
    return parse(tmp)
