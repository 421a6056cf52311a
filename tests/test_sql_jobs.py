"""`sql` jobs through HTTPS: on the owner's own database, with the owner's credentials."""
import uuid

import pytest

from conftest import DATA_SOURCE_RE, run_sql


SCRIPT = """CREATE TABLE iris (id INT PRIMARY KEY, species VARCHAR(40), petal DECIMAL(4,2));
INSERT INTO iris VALUES (1, 'setosa', 0.20), (2, 'versicolor; not a split', 1.30),
                        (3, 'virginica', 2.50);
UPDATE iris SET petal = petal + 1 WHERE id >= 2;
-- a comment; with a semicolon
SELECT id, species, petal FROM iris ORDER BY id"""

EXPECTED = [
    {"message": "0 row(s) affected"}, {"eoe": True},
    {"message": "3 row(s) affected"}, {"eoe": True},
    {"message": "2 row(s) affected"}, {"eoe": True},
    {"head": ["id", "species", "petal"]},
    {"row": [1, "setosa", "0.20"]},
    {"row": [2, "versicolor; not a split", "2.30"]},
    {"row": [3, "virginica", "3.50"]},
    {"eoe": True},
]


def test_sql_job_without_a_database_is_409(fetch_as):
    resp = fetch_as("alice")("POST", "/api/jobs", {"task_type": "sql", "spec": {"sql": "SELECT 1"}})
    assert resp.status == 409 and "create_db" in resp.body["error"]["message"]
    assert fetch_as("alice")("GET", "/api/jobs").body["jobs"] == []


def test_sql_job_on_sqlite(fetch_as):
    alice = fetch_as("alice")
    alice("POST", "/api/create_db")
    page, responses = run_sql(alice, "CREATE TABLE t (a INT, b TEXT); "
                                     "INSERT INTO t VALUES (1, 'x;y'), (2, NULL); "
                                     "SELECT a, b FROM t ORDER BY a")
    assert page["status"] == "SUCCEEDED"
    assert responses[-4:] == [{"head": ["a", "b"]}, {"row": [1, "x;y"]}, {"row": [2, None]},
                              {"eoe": True}]
    page, _ = run_sql(alice, "SELECT * FROM missing")
    assert page["status"] == "FAILED" and "no such table: missing" in page["message"]


@pytest.fixture
def mysql_jobs(make_server, mariadb, fetch_as):
    server = make_server(provisioner="mysql", mysql_dsn=mariadb)
    front = fetch_as("front", server.port)
    users = ["s" + uuid.uuid4().hex[:10] for _ in range(2)]
    sources = [front("POST", "/api/create_db", {"user_id": u}).body["data_source"]
               for u in users]
    yield front, users, [DATA_SOURCE_RE.match(s).groupdict() for s in sources]
    for u in users:
        front("POST", "/api/delete_db", {"user_id": u})


def test_sql_job_on_mariadb_reports_rows_head_and_affected_counts(mysql_jobs):
    front, (alice, _), _ = mysql_jobs
    page, responses = run_sql(front, SCRIPT, alice)
    assert page["status"] == "SUCCEEDED", page["message"]
    assert responses == EXPECTED
    assert page["outputs"] == {"statements": 4, "rows": 3}


def test_bad_statement_fails_with_the_database_message(mysql_jobs):
    front, (alice, _), _ = mysql_jobs
    page, responses = run_sql(front, "SELECT 1 AS ok; SELECT * FROM nope", alice)
    assert page["status"] == "FAILED"
    assert "statement 2 of 2 failed" in page["message"] and "nope' doesn't exist" in page["message"]
    assert responses == [{"head": ["ok"]}, {"row": [1]}, {"eoe": True}]


def test_a_users_job_cannot_read_another_users_database(mysql_jobs):
    front, (alice, bob), (_, bobs_db) = mysql_jobs
    assert run_sql(front, "CREATE TABLE secret (v INT); INSERT INTO secret VALUES (42)",
                   bob)[0]["status"] == "SUCCEEDED"
    page, responses = run_sql(front, f"SELECT v FROM `{bobs_db['db']}`.secret", alice)
    assert page["status"] == "FAILED" and "denied" in page["message"]
    assert not any("row" in r for r in responses)
