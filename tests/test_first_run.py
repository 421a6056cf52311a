"""A maintainer's first run (issue 13, item 9): `demo` listens on 127.0.0.1 unless told
otherwise, with readable log lines."""
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT  # noqa: F401  (conftest sets the gRPC door off for processes)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")


def run_demo(tmp_path, *flags):
    """Start `demo`, read its output until it serves, stop it; its output lines."""
    proc = subprocess.Popen([sys.executable, "-m", "sqlflow_playground", "demo", "--port=0",
                             *flags], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + 60
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "create_db" in line and "curl" in line or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    return lines + rest.splitlines()


@pytest.mark.parametrize("flags, bound", [((), "127.0.0.1"), (("--host=0.0.0.0",), "0.0.0.0")])
def test_demo_binds_the_loopback_unless_told_otherwise(tmp_path, flags, bound):
    lines = run_demo(tmp_path, *flags)
    [serving] = [ln for ln in lines if "serving https on" in ln]
    assert re.search(rf"serving https on {re.escape(bound)}:\d+ ", serving), serving
    # The demo is watched by a person: its log lines are text, each with a time stamp.
    logged = [ln for ln in lines if ln.startswith("20")]
    assert logged and all(TEXT_LINE.match(ln) for ln in logged), lines
    assert any("effective configuration: " in ln and f"host='{bound}'" in ln for ln in lines)
