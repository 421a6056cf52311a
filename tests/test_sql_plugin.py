"""The `sql` task type, called in-process (no server): the statement splitter, sqlite,
and a real MariaDB (see the `mariadb` fixture) reached with a per-test user's credentials."""
import dataclasses
import datetime
import decimal
import random
import secrets
import sqlite3
import time
import uuid

import pytest

from conftest import admin_connect
from sqlflow_playground.errors import Unprocessable
from sqlflow_playground.plugins.base import TaskContext, is_terminal
from sqlflow_playground.plugins.output import skipped
from sqlflow_playground.plugins.sql import SqlPlugin
from sqlflow_playground.plugins.sql_runner import json_safe
from sqlflow_playground.plugins.sqlsplit import split_statements

plugin = SqlPlugin()
EOE = {"eoe": True}


def affected(n):
    return [{"message": f"{n} row(s) affected"}, EOE]


def result(head, rows):
    return [{"head": head}, *({"row": r} for r in rows), EOE]


def make_ctx(tmp_path, data_source, max_bytes=1 << 20):
    workdir = tmp_path / ("job-" + uuid.uuid4().hex[:8])
    workdir.mkdir()
    return TaskContext(token=secrets.token_hex(16), user_id="u1", workdir=str(workdir),
                       data_source=data_source, max_bytes=max_bytes)


def poll(ctx, meta, timeout=30, on_page=None, page_bytes=None):
    """Follow the cursors until the job is over and nothing is left: (state, responses)."""
    cursor, responses, deadline = "", [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page_bytes:
            ctx = dataclasses.replace(ctx, max_bytes=page_bytes())
        state = plugin.get(ctx, meta, cursor)
        if on_page:
            on_page(state)
        responses += state.responses
        cursor = state.cursor
        if is_terminal(state.status) and not state.responses:
            return state, responses
        if not state.responses:
            time.sleep(0.02)
    raise AssertionError(f"job still {state.status} after {timeout}s")


def start(ctx, sql):
    """Create the job; its meta: the statement count and the runner's pid."""
    meta = plugin.create(ctx, {"sql": sql})
    assert meta == {"statements": len(split_statements(sql)), "runner_pid": meta["runner_pid"]}
    return meta


def run(ctx, sql, **kw):
    return poll(ctx, start(ctx, sql), **kw)


# -- splitter and values -----------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
    ("SELECT 'a;b'; SELECT \"c;d\"", ["SELECT 'a;b'", "SELECT \"c;d\""]),
    (r"SELECT 'it\'s;' ; SELECT 'x''y;z'", [r"SELECT 'it\'s;'", "SELECT 'x''y;z'"]),
    (r'SELECT "a\";b" ; SELECT """;"""', [r'SELECT "a\";b"', 'SELECT """;"""']),
    ("SELECT `a;b`, `c``;d` FROM t", ["SELECT `a;b`, `c``;d` FROM t"]),
    ("SELECT 1 -- one; two\n; SELECT 2", ["SELECT 1 -- one; two", "SELECT 2"]),
    ("SELECT 1 # one; two\n, 2", ["SELECT 1 # one; two\n, 2"]),
    ("SELECT /* a; b */ 1; /* only; a comment */ ;", ["SELECT /* a; b */ 1"]),
    ("SELECT 5--1; SELECT 2", ["SELECT 5--1", "SELECT 2"]),  # `--` without a space
    (" ;; \n ; -- nothing\n# nor here\n", []),
    ("-- lead\nSELECT 1;\n-- trail", ["-- lead\nSELECT 1"]),
    ("SELECT 'unterminated; x", ["SELECT 'unterminated; x"]),
])
def test_splitter_splits_only_on_top_level_semicolons(text, expected):
    assert split_statements(text) == expected


@pytest.mark.parametrize("value, expected", [
    (decimal.Decimal("12345678901234567890.0100"), "12345678901234567890.0100"),
    (datetime.date(2024, 2, 29), "2024-02-29"),
    (datetime.datetime(2024, 1, 2, 3, 4, 5, 600), "2024-01-02T03:04:05.000600"),
    (datetime.time(23, 59), "23:59:00"),
    (datetime.timedelta(hours=-1, minutes=-30), "-1:30:00"),
    (datetime.timedelta(hours=838, seconds=3599.5), "838:59:59.500000"),
    (float("nan"), "nan"), (float("-inf"), "-inf"), (1.5, 1.5),
    ("é", "é"), (b"caf\xc3\xa9", "café"), (b"\xff\x00", "base64:/wA="),
    (memoryview(b"ab"), "ab"), (None, None), (True, True), (7, 7),
])
def test_json_safe_values(value, expected):
    assert json_safe(value) == expected


# -- sqlite ----------------------------------------------------------------------

@pytest.fixture
def sqlite_ctx(tmp_path):
    path = tmp_path / "user.db"
    sqlite3.connect(path).close()
    return lambda **kw: make_ctx(tmp_path, "sqlite:///" + str(path), **kw)


SCRIPT = """CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL);
INSERT INTO t (name, score) VALUES ('a;b', 1.5), ('c', NULL);  -- two rows
SELECT id, name, score FROM t ORDER BY id;"""


def test_sqlite_script_yields_sqlflow_responses(sqlite_ctx):
    state, responses = run(sqlite_ctx(), SCRIPT)
    assert (state.status, state.message) == ("SUCCEEDED", "")
    assert state.outputs == {"statements": 3, "rows": 2}
    assert responses == affected(0) + affected(2) + result(
        ["id", "name", "score"], [[1, "a;b", 1.5], [2, "c", None]])


def test_sqlite_update_reports_affected_rows(sqlite_ctx):
    run(sqlite_ctx(), SCRIPT)
    state, responses = run(sqlite_ctx(), "UPDATE t SET score = 0 WHERE id > 0")
    assert state.status == "SUCCEEDED" and responses == affected(2)


def test_sqlite_error_fails_job_and_keeps_earlier_responses(sqlite_ctx):
    state, responses = run(sqlite_ctx(), "CREATE TABLE x (a); SELECT * FROM nope; SELECT 1")
    assert state.status == "FAILED"
    assert state.message == "statement 2 of 3 failed: no such table: nope"
    assert responses == affected(0)


def test_any_paging_of_responses_yields_the_same_list(sqlite_ctx):
    rows = [[i, "é" * random.randint(0, 90)] for i in range(300)]
    values = ", ".join(f"({i}, '{s}')" for i, s in rows)
    sql = f"CREATE TABLE p (i, s); INSERT INTO p VALUES {values}; SELECT i, s FROM p"
    ctx = sqlite_ctx()
    meta = start(ctx, sql)
    _, whole = poll(ctx, meta)
    assert whole == affected(0) + affected(300) + result(["i", "s"], rows)
    with open(f"{ctx.workdir}/responses.jsonl", "rb") as fh:
        sizes = [len(line) - 1 for line in fh]  # each response's JSON, without its newline
    largest = max(sizes)
    for page in (lambda: largest, lambda: random.randint(largest, largest + 400)):
        assert poll(ctx, meta, page_bytes=page)[1] == whole
    # A page smaller than a response: that response comes as a message saying so.
    small = largest - 1
    assert poll(ctx, meta, page_bytes=lambda: small)[1] == [
        skipped(size, small) if size > small else response
        for size, response in zip(sizes, whole)]


def test_no_statement_is_unprocessable(sqlite_ctx):
    for sql in ("", " ; ", "-- nothing here"):
        with pytest.raises(Unprocessable, match="no statement"):
            plugin.create(sqlite_ctx(), {"sql": sql})


def test_cancel_interrupts_a_running_sqlite_query(sqlite_ctx):
    ctx = sqlite_ctx()
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    meta = plugin.create(ctx, {"sql": forever})
    time.sleep(0.3)
    started = time.monotonic()
    plugin.delete(ctx, meta)
    plugin.delete(ctx, meta)  # idempotent
    state, _ = poll(ctx, meta, timeout=5)
    assert (state.status, state.message) == ("CANCELLED", "cancelled")
    assert time.monotonic() - started < 5  # interrupted: not delete's SIGKILL after 5 s


def test_without_a_live_worker_delete_cancels_and_recover_fails(sqlite_ctx):
    ctx = sqlite_ctx()
    plugin.delete(ctx, {})
    assert plugin.get(ctx, {}, "").status == "CANCELLED"
    other = sqlite_ctx()
    message = plugin.recover(other, {})
    assert "restarted" in message and plugin.get(other, {}, "").message == message


# -- MariaDB ---------------------------------------------------------------------

@pytest.fixture
def mysql_user(mariadb):
    """``mysql_user()`` → (data source, database) of a fresh user granted only on it."""
    made = []

    def make():
        name = "tsql_" + uuid.uuid4().hex[:10]
        password = secrets.token_urlsafe(18)
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{name}'@'%'")
        made.append(name)
        return (f"mysql://{name}:{password}@tcp(127.0.0.1:3306)/{name}?maxAllowedPacket=0",
                name)

    yield make
    with admin_connect() as conn, conn.cursor() as cur:
        for name in made:
            cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


TABLE = """CREATE TABLE t (id INT PRIMARY KEY, price DECIMAL(20,4), at DATETIME(3),
    day DATE, took TIME, note VARCHAR(20), raw VARBINARY(4));
INSERT INTO t VALUES (1, 12345678901234.5678, '2024-01-02 03:04:05.678', '2024-02-29',
    '-01:30:00', 'x;y', 0xFF00), (2, NULL, NULL, NULL, NULL, 'é', 'ab')"""


def test_mysql_select_returns_head_and_json_safe_rows(mysql_user, tmp_path):
    ds, _ = mysql_user()
    state, responses = run(make_ctx(tmp_path, ds), TABLE + "; SELECT * FROM t ORDER BY id")
    assert state.status == "SUCCEEDED", state.message
    assert responses == affected(0) + affected(2) + result(
        ["id", "price", "at", "day", "took", "note", "raw"],
        [[1, "12345678901234.5678", "2024-01-02T03:04:05.678000", "2024-02-29", "-1:30:00",
          "x;y", "base64:/wA="], [2, None, None, None, None, "é", "ab"]])


def test_mysql_update_reports_affected_rows(mysql_user, tmp_path):
    ds, _ = mysql_user()
    state, responses = run(make_ctx(tmp_path, ds), TABLE + "; UPDATE t SET note = 'z'")
    assert state.status == "SUCCEEDED" and responses[-2:] == affected(2)


def test_mysql_error_fails_job_with_the_server_message(mysql_user, tmp_path):
    ds, db = mysql_user()
    state, responses = run(make_ctx(tmp_path, ds), "SELECT 1 AS one; SELECT * FROM nope")
    assert state.status == "FAILED"
    assert state.message == f"statement 2 of 2 failed: Table '{db}.nope' doesn't exist"
    assert responses == result(["one"], [[1]])


def test_mysql_user_cannot_reach_another_users_database(mysql_user, tmp_path):
    ds_a, _ = mysql_user()
    ds_b, db_b = mysql_user()
    assert run(make_ctx(tmp_path, ds_b), "CREATE TABLE secret (x INT)")[0].status == "SUCCEEDED"
    state, _ = run(make_ctx(tmp_path, ds_a), f"SELECT * FROM `{db_b}`.secret")
    assert state.status == "FAILED" and "denied" in state.message
    a_on_b = ds_a.rsplit("/", 1)[0] + f"/{db_b}?maxAllowedPacket=0"  # A's credentials
    state, _ = run(make_ctx(tmp_path, a_on_b), "SELECT 1")
    assert state.status == "FAILED" and "Access denied" in state.message
    password = ds_a.split(":")[2].split("@")[0]
    wrong = ds_a.replace(password, "not-" + password)
    state, _ = run(make_ctx(tmp_path, wrong), "SELECT 1")
    assert state.message.startswith("cannot connect to the database: Access denied")
    assert password not in state.message


def test_mysql_large_result_streams_in_order(mysql_user, tmp_path):
    ds, _ = mysql_user()
    sql = ("SET max_recursive_iterations = 30000; WITH RECURSIVE s (n) AS (SELECT 1 UNION ALL "
           "SELECT n + 1 FROM s WHERE n < 20000) SELECT n, IF(n = 20000, SLEEP(1.5), 0) z FROM s")
    rows_seen_while_running = []
    state, responses = run(make_ctx(tmp_path, ds, max_bytes=4096), sql, on_page=lambda s:
                           s.status == "RUNNING" and rows_seen_while_running.extend(s.responses))
    assert state.status == "SUCCEEDED" and state.outputs == {"statements": 2, "rows": 20000}
    assert responses == affected(0) + result(["n", "z"], [[n, 0] for n in range(1, 20001)])
    assert any("row" in r for r in rows_seen_while_running)


def test_mysql_cancel_kills_a_running_query(mysql_user, tmp_path):
    ds, _ = mysql_user()
    ctx = make_ctx(tmp_path, ds)
    meta = plugin.create(ctx, {"sql": "SELECT 1 AS one; SELECT SLEEP(30); SELECT 'never'"})
    deadline, first, cursor = time.monotonic() + 5, [], ""
    while EOE not in first and time.monotonic() < deadline:  # statement 1's responses
        state = plugin.get(ctx, meta, cursor)                # show while 2 runs
        first, cursor = first + state.responses, state.cursor
    assert state.status == "RUNNING" and first == result(["one"], [[1]])
    time.sleep(0.3)
    started = time.monotonic()
    plugin.delete(ctx, meta)
    state, responses = poll(ctx, meta, timeout=10)
    assert (state.status, state.message) == ("CANCELLED", "cancelled")
    assert time.monotonic() - started < 5
    assert responses[:len(first)] == first and {"row": ["never"]} not in responses
    plugin.delete(ctx, meta)  # idempotent once over
    assert plugin.get(ctx, meta, "").status == "CANCELLED"
