"""A hostile tenant's numbers and shapes (issue 9): NaN, Infinity, absurd magnitudes and
deep nesting are 400s naming the field and change nothing; and nothing under the state
directory is readable by another local user."""
import json
import logging
import os
import stat

import pytest

from sqlflow_playground.statedir import secure_state_dir


@pytest.fixture
def alice(server, fetch_as):
    alice = fetch_as("alice")
    assert alice("POST", "/api/create_db").status == 200
    return alice


def job_body(fetch_timeout: str, spec: str = '{"sql": "SELECT 1"}') -> bytes:
    return ('{"task_type": "sql", "spec": %s, "fetch_timeout_s": %s}'
            % (spec, fetch_timeout)).encode()


@pytest.mark.parametrize("body,field", [
    (job_body("NaN"), "fetch_timeout_s"),
    (job_body("Infinity"), "fetch_timeout_s"),
    (job_body("-Infinity"), "fetch_timeout_s"),
    (job_body("1e308"), "fetch_timeout_s"),
    (job_body("1" * 400), "fetch_timeout_s"),
    (job_body("10", '{"sql": "SELECT 1", "x": [1, NaN]}'), "spec.x[1]"),
    (b'{"task_type": "process", "spec": {"command": ["true"], "timeout_s": Infinity}}',
     "spec.timeout_s"),
])
def test_non_finite_and_absurd_numbers_are_refused_naming_the_field(server, alice, body, field):
    for path in ("/api/jobs", "/plugins/v1/sql/v1"):
        if path.startswith("/plugins"):
            body = body.replace(b'"task_type": "sql", ', b"")
        resp = alice("POST", path, body)
        assert resp.status == 400, resp.body
        assert resp.body["error"]["code"] == "bad_request"
        assert field in resp.body["error"]["message"], resp.body
    assert server.gateway.store.list_jobs() == []
    listing = alice("GET", "/api/jobs")
    assert listing.status == 200 and listing.body == {"jobs": []}


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b'{"user_id": ' + b'{"a": ' * 100_000,
    ('{"user_id": "alice", "x": %s1%s}' % ("[" * 65, "]" * 65)).encode(),
])
def test_deep_nesting_is_a_400_not_a_crash(server, alice, body):
    before = server.gateway.store.list_users()
    resp = alice("POST", "/api/create_db", body)
    assert resp.status == 400, resp.body
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "nested" in resp.body["error"]["message"] or "JSON" in resp.body["error"]["message"]
    assert server.gateway.store.list_users() == before


def test_nesting_a_manifest_needs_is_accepted(server, alice):
    """The depth bound leaves room for real specs (a Kubernetes manifest nests ~10 deep)."""
    nested = {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": [[1.5, 2]]}}}}}}}}}}
    resp = alice("POST", "/api/create_db", json.dumps({"user_id": "alice", "deep": nested}))
    assert resp.status == 400 and "unknown field" in resp.body["error"]["message"]


def modes_under(root):
    """{path: mode} of everything under ``root``, the root included."""
    found = {root: stat.S_IMODE(os.lstat(root).st_mode)}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(parent, name)
            found[path] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def test_nothing_in_the_state_dir_is_readable_by_others(make_server, fetch_as):
    """Under the test runner's umask (022), so each writer must create its files private:
    the store, every tenant's sqlite file and its WAL, job directories and their output."""
    old = os.umask(0o022)
    try:
        server = make_server(enable_process_jobs=True)
        alice = fetch_as("alice", server.port)
        assert alice("POST", "/api/create_db").status == 200
        for spec, task in (({"sql": "CREATE TABLE t(x); INSERT INTO t VALUES (1)"}, "sql"),
                           ({"command": ["sh", "-c", "echo hi; echo x > f"]}, "process")):
            token = alice("POST", "/api/jobs", {"task_type": task, "spec": spec}).body["token"]
            body = alice("GET", f"/api/jobs/{token}?wait=20").body
            while not body["eof"]:
                body = alice("GET", f"/api/jobs/{token}?since={body['next']}&wait=20").body
            assert body["status"] == "SUCCEEDED", body
        server.gateway.store.get_job(token)  # the store has been written through
    finally:
        os.umask(old)
    found = modes_under(server.config.state_dir)
    assert any(p.endswith("store.db") for p in found)
    assert any(p.endswith(".db") and "databases" in p for p in found)
    open_to_others = {p: oct(m) for p, m in found.items() if m & 0o077}
    assert open_to_others == {}


def test_an_existing_state_dir_is_tightened_at_start_with_a_log_line(tmp_path, caplog):
    state = tmp_path / "state"
    (state / "databases").mkdir(parents=True)
    (state / "databases").chmod(0o755)
    (state / "store.db").write_text("")
    (state / "store.db").chmod(0o644)
    (state / "databases" / "bob.db").write_text("")
    (state / "databases" / "bob.db").chmod(0o664)
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o644)
    (state / "link").symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="sqlflow_playground.statedir"):
        assert secure_state_dir(str(state)) == 4  # state itself, databases, two files
    assert all(m & 0o077 == 0 for p, m in modes_under(str(state)).items()
               if not p.endswith("link"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # a link is never followed
    assert "tightened the permissions of 4 path(s)" in caplog.text
    caplog.clear()
    assert secure_state_dir(str(state)) == 0  # already private: nothing to say
    assert caplog.text == ""
