"""The dashboard (issue 14): pages at /ui/ served by the gateway over the same mutual TLS.

The browser tests drive Debian's chromium through chromedriver (selenium). Each identity
(alice, bob, the frontend "front") gets a browser of its own whose NSS database ($HOME/.pki/
nssdb of a private HOME) holds the test CA, trusted, and that identity's PKCS#12 bundle from
``gen_cert.sh --p12``; Chromium's managed policy AutoSelectCertificateForUrls picks the one
client certificate for https://127.0.0.1:*, so every page is a real mutual-TLS request.

Screenshots of each page go to a folder printed at the start and the end of the run
(``$DASHBOARD_SCREENSHOTS``, or a pytest temporary directory). Under CI=true a missing
browser, driver or NSS tool fails the run (conftest.missing); elsewhere it skips.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import client_context, missing, request, wait_until

POLICY_DIR = Path("/etc/chromium/policies/managed")
POLICY_FILE = POLICY_DIR / "sqlflow-playground-tests.json"
# Auto-select, on the test servers only, the client certificate issued by the test CA (each
# browser's NSS database holds exactly one).
POLICY = {"AutoSelectCertificateForUrls": [json.dumps({
    "pattern": "https://127.0.0.1:*",
    "filter": {"ISSUER": {"CN": "sqlflow-playground CA"}}})]}
WAIT_S = 30  # an upper bound for the page to show what it must; never a pace

XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=\"document.title='pwned';alert(2)\">"


# -- the browser -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser_tools():
    """chromium, chromedriver, NSS tools, selenium and the certificate policy, or
    ``missing`` (a failure under CI=true)."""
    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver"),
                          ("pk12util", "libnss3-tools"), ("certutil", "libnss3-tools")):
        if not shutil.which(tool):
            missing(f"{tool} is not installed (apt-get install {package})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    wrote = False
    wanted = json.dumps(POLICY, indent=1)
    try:
        if not POLICY_FILE.is_file() or POLICY_FILE.read_text() != wanted:
            POLICY_DIR.mkdir(parents=True, exist_ok=True)
            POLICY_FILE.write_text(wanted)
            wrote = True
    except OSError as e:
        missing(f"cannot write Chromium's certificate policy {POLICY_FILE}: {e} "
                "(run as root, or install that file)")
    yield
    if wrote:
        POLICY_FILE.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def shots(request, tmp_path_factory):
    """``shots(driver, "name")`` saves NAME.png in the run's screenshot folder."""
    folder = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or
                  tmp_path_factory.mktemp("dashboard_screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:  # past pytest's capture: the run shows where they are
        if capture is not None:
            with capture.global_and_fixture_disabled():
                print(f"\n{line}", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr)

    say(f"dashboard screenshots: {folder}")

    def shoot(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot {path}"
        return path

    yield shoot
    taken = sorted(p.name for p in folder.glob("*.png"))
    say(f"dashboard screenshots in {folder}: {', '.join(taken)}")


def nss_home(certs, name: str, home: Path) -> Path:
    """A HOME whose NSS database trusts the test CA and holds NAME's PKCS#12 bundle, made
    by ``gen_cert.sh --p12`` (which keeps NAME's existing certificate)."""
    subprocess.run(["bash", str(Path(__file__).resolve().parents[1] / "scripts" / "gen_cert.sh"),
                    "--p12", name], env={**os.environ, "KEY_STORE": str(certs.dir)},
                   check=True, capture_output=True)
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    nss = f"sql:{db}"
    subprocess.run(["certutil", "-N", "-d", nss, "--empty-password"], check=True,
                   capture_output=True)
    subprocess.run(["certutil", "-A", "-d", nss, "-n", "sqlflow-playground test CA", "-t",
                    "CT,,", "-i", certs.ca], check=True, capture_output=True)
    subprocess.run(["pk12util", "-i", str(certs.dir / name / f"{name}.p12"), "-d", nss,
                    "-w", str(certs.dir / name / f"{name}.p12.pass")], check=True,
                   capture_output=True)
    return home


@pytest.fixture(scope="module")
def browser(browser_tools, certs, tmp_path_factory):
    """``browser("alice")``: a headless Chromium presenting alice's certificate."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = {}

    def get(name: str):
        if name in drivers:
            return drivers[name]
        home = nss_home(certs, name, tmp_path_factory.mktemp(f"home_{name}"))
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1400,1000", "--no-first-run",
                    "--disable-background-networking", "--disable-extensions"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(shutil.which("chromedriver"), env={**os.environ, "HOME": str(home)})
        driver = webdriver.Chrome(options=options, service=service)
        driver.set_page_load_timeout(WAIT_S)
        drivers[name] = driver
        return driver

    yield get
    for driver in drivers.values():
        driver.quit()


def until(driver, condition, timeout=WAIT_S, message=""):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    # A table the page is redrawing meanwhile: look again.
    return WebDriverWait(driver, timeout, ignored_exceptions=[
        StaleElementReferenceException]).until(condition, message)


def loaded(driver, url: str):
    """Open URL and wait for the page's script to have drawn its data."""
    driver.get(url)
    until(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-loaded"),
          message=f"{url} never finished loading its data")


def confirm_next(driver, expect: str = "", accept: bool = True) -> str:
    """Answer the confirmation dialog the last click opened; return its question."""
    from selenium.webdriver.support import expected_conditions as EC
    until(driver, EC.alert_is_present(), message="no confirmation was asked")
    alert = driver.switch_to.alert
    text = alert.text
    assert expect in text, text
    if accept:
        alert.accept()
    else:
        alert.dismiss()
    return text


def console(driver):
    return driver.get_log("browser")


def texts(driver, css: str):
    return [e.text for e in driver.find_elements("css selector", css)]


# -- servers and data --------------------------------------------------------------------

@pytest.fixture
def gateway(make_server):
    return make_server(enable_process_jobs=True)


def url(server, path="/"):
    return f"https://127.0.0.1:{server.port}{path}"


def submit(fetch, spec, task_type="process"):
    resp = fetch("POST", "/api/jobs", {"task_type": task_type, "spec": spec})
    assert resp.status == 201, resp.body
    return resp.body["token"]


def follow_to_end(fetch, token):
    deadline = time.monotonic() + 60
    cursor = ""
    while time.monotonic() < deadline:
        body = fetch("GET", f"/api/jobs/{token}?since={cursor}&wait=5").body
        cursor = body["next"]
        if body["eof"]:
            return body
    raise AssertionError("job did not finish")


def python_job(code: str):
    return {"command": [sys.executable, "-c", code]}


# -- the browser tests -------------------------------------------------------------------

def test_admin_page_lists_users_and_jobs_and_releases_a_database(gateway, fetch_as, browser,
                                                                 shots):
    alice, bob = fetch_as("alice", gateway.port), fetch_as("bob", gateway.port)
    secrets = [alice("POST", "/api/create_db").body["data_source"],
               bob("POST", "/api/create_db").body["data_source"]]
    assert bob("GET", "/api/heart_beat").status == 200
    token = submit(alice, python_job("print('hello from alice')"))
    follow_to_end(alice, token)

    d = browser("front")
    d.get(url(gateway))  # "/" redirects to /ui/
    until(d, lambda d: d.current_url.endswith("/ui/"))
    until(d, lambda d: d.find_element("tag name", "body").get_attribute("data-loaded"))
    assert d.find_element("id", "identity").text == "front"
    users = {tr.get_attribute("data-user"): tr.text
             for tr in d.find_elements("css selector", "#users-body tr[data-user]")}
    assert set(users) == {"alice", "bob"}
    assert "ready" in users["alice"] and "sqlite (server file)" in users["alice"]
    jobs = d.find_elements("css selector", f"#jobs-body tr[data-token='{token}']")
    assert len(jobs) == 1
    cells = [td.text for td in jobs[0].find_elements("tag name", "td")]
    assert cells[1] == "alice" and cells[2] == "process v1" and cells[3] == "SUCCEEDED"
    assert d.find_element("id", "count-users").text == "2"
    assert d.find_element("id", "count-jobs").text == "1"
    # The chart of the last hour has this job's minute and bob's heart beat.
    assert d.find_elements("css selector", "#chart-jobs rect.bar")
    assert d.find_elements("css selector", "#chart-beats rect.bar")
    source = d.page_source
    for data_source in secrets:  # hosts only: never a data source or its secret
        assert data_source not in source
        assert data_source.partition("secret=")[2] not in source
    shots(d, "admin")

    # Declining the confirmation releases nothing.
    d.find_element("css selector", "#users-body tr[data-user='alice'] button.release").click()
    confirm_next(d, "Release the database of alice", accept=False)
    d.find_element("id", "refresh").click()
    until(d, lambda d: d.find_elements("css selector", "#users-body tr[data-user='alice']"))
    assert alice("GET", "/api/users/alice").status == 200

    d.find_element("css selector", "#users-body tr[data-user='bob'] button.release").click()
    assert "bob" in confirm_next(d, "Release the database of bob")
    until(d, lambda d: not d.find_elements("css selector", "#users-body tr[data-user='bob']"),
          message="bob's row is still listed after the release")
    assert bob("GET", "/api/users/bob").status == 404
    assert alice("GET", "/api/users/alice").status == 200  # only bob's was released
    assert d.find_element("id", "count-users").text == "1"
    shots(d, "admin_after_release")


def test_the_admin_page_pages_and_filters(gateway, browser, shots):
    store = gateway.gateway.store
    now = time.time()
    for i in range(120):
        store.save_user(f"u{i:03d}", "sqlite", f"sqlite:////nowhere/u{i:03d}.db?secret=s{i}",
                        {"path": f"/nowhere/u{i:03d}.db"}, now)
    for i in range(60):
        store.insert_job(token=f"job{i:03d}", user_id=f"u{i % 3:03d}", task_type="sql",
                         version="v1", spec={"sql": "SELECT 1"},
                         status="FAILED" if i % 2 else "SUCCEEDED", message=f"m{i}",
                         created_at=now - i, started_at=now - i, finished_at=now - i + 1,
                         last_fetched_at=now, fetch_timeout_s=60.0, replica="r1")
    d = browser("front")
    loaded(d, url(gateway, "/ui/"))

    def users():
        return [tr.get_attribute("data-user")
                for tr in d.find_elements("css selector", "#users-body tr[data-user]")]

    def jobs():
        return [tr.get_attribute("data-token")
                for tr in d.find_elements("css selector", "#jobs-body tr[data-token]")]

    assert users() == [f"u{i:03d}" for i in range(50)]
    assert jobs() == [f"job{i:03d}" for i in range(50)]
    assert d.find_element("css selector", "#users-pager .page-info").text == \
        "page 1 of 3 · 120 in all"
    d.find_elements("css selector", "#users-pager button")[1].click()  # Next
    until(d, lambda d: users()[:1] == ["u050"])
    assert users() == [f"u{i:03d}" for i in range(50, 100)]
    assert jobs() == [f"job{i:03d}" for i in range(50)]  # the other list stays on its page
    d.find_elements("css selector", "#jobs-pager button")[1].click()
    until(d, lambda d: jobs() == [f"job{i:03d}" for i in range(50, 60)])
    d.find_element("id", "user-prefix").send_keys("u11")
    until(d, lambda d: users() == [f"u11{i}" for i in range(10)])
    assert d.find_element("css selector", "#users-pager .page-info").text == \
        "page 1 of 1 · 10 in all"
    d.find_element("id", "job-owner").send_keys("u001")
    from selenium.webdriver.support.ui import Select
    Select(d.find_element("id", "job-status")).select_by_visible_text("FAILED")
    expected = [f"job{i:03d}" for i in range(60) if i % 3 == 1 and i % 2]
    until(d, lambda d: jobs() == expected)
    shots(d, "admin_paged_and_filtered")


def test_a_user_sees_only_their_own_rows_and_a_404_page_for_another_users_job(
        gateway, fetch_as, browser, shots):
    alice, bob = fetch_as("alice", gateway.port), fetch_as("bob", gateway.port)
    mine = submit(alice, python_job("print('mine')"))
    theirs = submit(bob, python_job("print('theirs')"))
    follow_to_end(alice, mine)
    follow_to_end(bob, theirs)

    d = browser("alice")
    loaded(d, url(gateway, "/ui/"))
    assert d.find_element("id", "identity").text == "alice"
    tokens = [tr.get_attribute("data-token")
              for tr in d.find_elements("css selector", "#jobs-body tr[data-token]")]
    assert tokens == [mine]
    assert theirs not in d.page_source and "bob" not in d.page_source
    assert d.find_element("id", "db-status").text == "none"
    assert not d.find_elements("id", "users-body")  # no admin table for a user

    # Their own database from the page, then its data source on demand.
    d.find_element("id", "db-create").click()
    until(d, lambda d: d.find_element("id", "db-status").text == "ready")
    data_source = alice("GET", "/api/users/alice").body["data_source"]
    assert data_source not in d.page_source
    assert not d.find_element("id", "ds-box").is_displayed()
    d.find_element("id", "db-show").click()
    until(d, lambda d: d.find_element("id", "ds-box").is_displayed())
    assert d.find_element("id", "ds-value").get_attribute("value") == data_source
    d.find_element("id", "ds-copy").click()
    until(d, lambda d: "Copied" in d.find_element("id", "notice").text)
    shots(d, "user")
    d.find_element("id", "ds-hide").click()
    assert d.find_element("id", "ds-value").get_attribute("value") == ""

    # Another user's job, even by URL: the same 404 page as a job that does not exist.
    d.get(url(gateway, f"/ui/jobs/{theirs}"))
    assert d.find_element("id", "error-status").text == "404 Not Found"
    assert "theirs" not in d.page_source and "bob" not in d.page_source
    shots(d, "job_of_another_user_404")
    d.get(url(gateway, "/ui/jobs/" + "x" * 20))
    assert d.find_element("id", "error-status").text == "404 Not Found"
    # ... and the admin data: refused.
    d.get(url(gateway, "/ui/data/admin"))
    assert "frontend certificates only" in d.page_source
    assert "bob" not in d.page_source
    # Their own job page works.
    d.get(url(gateway, f"/ui/jobs/{mine}"))
    until(d, lambda d: d.find_element("tag name", "body").get_attribute("data-eof") == "true")
    assert d.find_element("id", "job-output").text.strip() == "mine"


def test_a_running_jobs_output_appears_live_without_a_reload(gateway, fetch_as, browser,
                                                             shots, tmp_path):
    """The job prints a line, then waits for a file the test creates only once the page
    shows that line: what comes after can only reach the page by its long poll."""
    gate = tmp_path / "go"
    alice = fetch_as("alice", gateway.port)
    token = submit(alice, python_job(
        "import os, time\n"
        "print('first line', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}):\n"
        "    time.sleep(0.05)\n"
        "print('second line', flush=True)\n"))
    d = browser("alice")
    d.get(url(gateway, f"/ui/jobs/{token}"))
    until(d, lambda d: "first line" in d.find_element("id", "job-output").text,
          message="the first line never appeared")
    assert "second line" not in d.find_element("id", "job-output").text
    assert d.find_element("id", "job-status").text == "RUNNING"
    assert d.find_element("id", "job-cancel").is_enabled()
    d.execute_script("window.__same_page = 'still here';")
    shots(d, "job_live_running")
    gate.touch()
    until(d, lambda d: "second line" in d.find_element("id", "job-output").text,
          message="the second line never appeared")
    until(d, lambda d: d.find_element("id", "job-status").text == "SUCCEEDED")
    assert d.execute_script("return window.__same_page") == "still here"  # no reload
    assert d.find_element("id", "job-output").text.split("\n") == ["first line", "second line"]
    assert not d.find_element("id", "job-cancel").is_enabled()
    shots(d, "job_live_done")


def test_cancelling_a_running_job_from_its_page(gateway, fetch_as, browser):
    alice = fetch_as("alice", gateway.port)
    token = submit(alice, python_job("import time\nprint('waiting', flush=True)\n"
                                     "time.sleep(600)"))
    d = browser("alice")
    d.get(url(gateway, f"/ui/jobs/{token}"))
    until(d, lambda d: "waiting" in d.find_element("id", "job-output").text)
    d.find_element("id", "job-cancel").click()
    confirm_next(d, token)
    until(d, lambda d: d.find_element("id", "job-status").text == "CANCELLED")
    assert alice("GET", f"/api/jobs/{token}").body["status"] == "CANCELLED"


def test_the_sql_console_returns_a_table(gateway, fetch_as, browser, shots):
    alice = fetch_as("alice", gateway.port)
    alice("POST", "/api/create_db")
    d = browser("alice")
    loaded(d, url(gateway, "/ui/"))
    box = d.find_element("id", "sql")
    box.send_keys("CREATE TABLE fruit (id INT, name TEXT, price REAL);\n"
                  "INSERT INTO fruit VALUES (1, 'apple', 0.5), (2, 'pear', NULL), "
                  "(3, 'fig', 2.25);\n"
                  "SELECT id, name, price FROM fruit ORDER BY id")
    d.find_element("id", "sql-run").click()
    until(d, lambda d: d.find_element("id", "sql-summary").get_attribute("data-status"),
          message="the console never finished")
    assert d.find_element("id", "sql-summary").get_attribute("data-status") == "SUCCEEDED"
    tables = d.find_elements("css selector", "#sql-output table.result")
    assert len(tables) == 1
    assert texts(d, "#sql-output table.result th") == ["id", "name", "price"]
    rows = [[td.text for td in tr.find_elements("tag name", "td")]
            for tr in tables[0].find_elements("css selector", "tbody tr")]
    assert rows == [["1", "apple", "0.5"], ["2", "pear", "NULL"], ["3", "fig", "2.25"]]
    assert d.find_element("css selector", "#sql-summary .sql-rows").text == "· 3 rows"
    assert re.fullmatch(r"· \d+\.\d{3} s ·", d.find_element(
        "css selector", "#sql-summary .sql-elapsed").text)
    shots(d, "sql_console")

    # The job's own page draws the same table; the console's job is in the list.
    d.find_element("css selector", "#sql-summary a").click()
    until(d, lambda d: d.find_element("tag name", "body").get_attribute("data-eof") == "true")
    assert texts(d, "#job-output table.result th") == ["id", "name", "price"]
    assert len(d.find_elements("css selector", "#job-output table.result tbody tr")) == 3
    shots(d, "sql_job_page")

    # An error is shown as the job's message.
    loaded(d, url(gateway, "/ui/"))
    d.find_element("id", "sql").send_keys("SELECT * FROM no_such_table")
    d.find_element("id", "sql-run").click()
    until(d, lambda d: d.find_element("id", "sql-summary").get_attribute("data-status"))
    assert d.find_element("id", "sql-summary").get_attribute("data-status") == "FAILED"
    assert "no such table: no_such_table" in d.find_element("id", "sql-output").text


def test_hostile_output_is_text_and_no_script_runs(gateway, fetch_as, browser, shots):
    alice = fetch_as("alice", gateway.port)
    alice("POST", "/api/create_db")
    token = submit(alice, python_job(f"print({XSS_SCRIPT!r})\nprint({XSS_IMG!r})"))
    follow_to_end(alice, token)
    # A table whose column name and value are markup; a message naming markup.
    sql = submit(alice, {"sql": "SELECT '<img src=x onerror=alert(3)>' AS \"<b>col</b>\""},
                 task_type="sql")
    follow_to_end(alice, sql)
    failed = submit(alice, {"sql": "SELECT * FROM \"<script>alert(4)</script>\""},
                    task_type="sql")
    assert follow_to_end(alice, failed)["status"] == "FAILED"

    def assert_inert(d, where):
        from selenium.common.exceptions import NoAlertPresentException
        with pytest.raises(NoAlertPresentException):
            d.switch_to.alert.text  # no alert() ran
        assert d.title != "pwned"
        logs = console(d)
        assert not [e for e in logs if e["level"] == "SEVERE"], logs
        assert not [e for e in logs if re.search(r"alert|pwned|Content Security Policy",
                                                  e["message"])], logs
        assert not d.find_elements("css selector", f"{where} script, {where} img, {where} b")

    d = browser("alice")
    d.get(url(gateway, f"/ui/jobs/{token}"))
    console(d)  # what earlier pages of this browser logged is not this test's
    d.refresh()
    until(d, lambda d: d.find_element("tag name", "body").get_attribute("data-eof") == "true")
    assert_inert(d, "#job-output")
    assert d.find_element("id", "job-output").text.split("\n") == [XSS_SCRIPT, XSS_IMG]
    shots(d, "xss_job_output")

    d.get(url(gateway, f"/ui/jobs/{sql}"))
    until(d, lambda d: d.find_element("tag name", "body").get_attribute("data-eof") == "true")
    assert texts(d, "#job-output th") == ["<b>col</b>"]
    assert texts(d, "#job-output td") == ["<img src=x onerror=alert(3)>"]
    assert_inert(d, "#job-output")

    d.get(url(gateway, f"/ui/jobs/{failed}"))  # the message is in the server-rendered page
    until(d, lambda d: d.find_element("tag name", "body").get_attribute("data-eof") == "true")
    assert "<script>alert(4)</script>" in d.find_element("id", "job-message").text
    assert_inert(d, "main")

    front = browser("front")  # the admin's list shows the same message as text
    front.get(url(gateway, "/ui/"))
    console(front)
    loaded(front, url(gateway, "/ui/"))
    row = front.find_element("css selector", f"#jobs-body tr[data-token='{failed}']")
    assert "<script>alert(4)</script>" in row.find_element("css selector", "td.msg").text
    assert_inert(front, "#jobs-body")
    shots(front, "xss_admin")


# -- the same routes without a browser: headers, XSRF, authorisation, pages --------------

def ui_session(certs, port, name):
    """(ctx, cookie header, XSRF token) as the page of NAME would have them."""
    ctx = client_context(certs.dir, name)
    resp = request(port, ctx, "GET", "/ui/")
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"].split(";")[0]
    token = re.search(rb'<meta name="xsrf-token" content="([^"]+)">', resp.body).group(1)
    return ctx, cookie, token.decode()


def test_pages_have_a_strict_csp_and_no_inline_script(certs, gateway):
    ctx = client_context(certs.dir, "front")
    for path in ("/ui/", "/ui/jobs/nope", "/ui/data/admin"):
        resp = request(gateway.port, ctx, "GET", path)
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "http" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        if path != "/ui/data/admin":
            html = resp.body.decode()
            assert re.findall(r"<script[^>]*>", html) == [
                re.search(r'<script src="/ui/static/dashboard\.js\?v=\w+" defer>', html)[0]]
            assert not re.search(r"<style|\sstyle=|\son\w+=|javascript:", html, re.I)
            assert not re.search(r"(src|href)=\"(https?:)?//", html), "loads from elsewhere"
    js = request(gateway.port, ctx, "GET", "/ui/static/dashboard.js")
    assert js.status == 200 and b"innerHTML" not in js.body and b"http" not in js.body \
        .replace(b"http://www.w3.org/2000/svg", b"")
    assert request(gateway.port, ctx, "GET", "/").headers["Location"] == "/ui/"


def test_ui_actions_need_the_xsrf_token_and_the_api_does_not(certs, gateway, fetch_as):
    alice_api = fetch_as("alice", gateway.port)
    assert alice_api("POST", "/api/create_db").status == 200
    ctx, cookie, token = ui_session(certs, gateway.port, "alice")
    # No token, a wrong token, a token without its cookie, a cross-site request: refused.
    for headers in ({}, {"Cookie": cookie, "X-XSRFToken": "2|00|00|0"},
                    {"X-XSRFToken": token},
                    {"Cookie": cookie, "X-XSRFToken": token, "Sec-Fetch-Site": "cross-site"},
                    {"Cookie": cookie, "X-XSRFToken": token, "Origin": "https://evil.test"}):
        resp = request(gateway.port, ctx, "POST", "/ui/action/release", {}, headers=headers)
        assert resp.status == 403, (headers, resp.body)
    assert alice_api("GET", "/api/users/alice").status == 200  # still there
    resp = request(gateway.port, ctx, "POST", "/ui/action/release", {},
                   headers={"Cookie": cookie, "X-XSRFToken": token,
                            "Origin": f"https://127.0.0.1:{gateway.port}",
                            "Sec-Fetch-Site": "same-origin"})
    assert resp.status == 200 and resp.body == {"user_id": "alice", "released": True}
    # The JSON API is as before: no cookie, no token.
    assert alice_api("POST", "/api/create_db").status == 200
    assert alice_api("POST", "/api/delete_db").body["released"] is True


def test_ui_actions_have_the_apis_authorisation(certs, gateway, fetch_as):
    alice_api, bob_api = fetch_as("alice", gateway.port), fetch_as("bob", gateway.port)
    bob_api("POST", "/api/create_db")
    theirs = submit(bob_api, python_job("import time; time.sleep(600)"))
    ctx, cookie, token = ui_session(certs, gateway.port, "alice")
    headers = {"Cookie": cookie, "X-XSRFToken": token}

    def act(path, body):
        return request(gateway.port, ctx, "POST", path, body, headers=headers)

    assert act("/ui/action/release", {"user_id": "bob"}).status == 403
    assert act("/ui/action/cancel", {"token": theirs}).status == 404
    assert act("/ui/action/data_source", {}).status == 404  # alice has none; never bob's
    assert bob_api("GET", "/api/users/bob").status == 200
    assert bob_api("GET", f"/api/jobs/{theirs}").body["status"] in ("PENDING", "RUNNING")
    assert request(gateway.port, ctx, "GET", "/ui/data/admin").status == 403
    me = request(gateway.port, ctx, "GET", "/ui/data/me").body
    assert me["user_id"] == "alice" and me["database"] is None and me["jobs"]["rows"] == []
    # The frontend may: the same rules as /api/delete_db and DELETE /api/jobs/{token}.
    fctx, fcookie, ftoken = ui_session(certs, gateway.port, "front")
    fh = {"Cookie": fcookie, "X-XSRFToken": ftoken}
    resp = request(gateway.port, fctx, "POST", "/ui/action/cancel", {"token": theirs}, headers=fh)
    assert resp.status == 200 and resp.body["status"] == "CANCELLED"
    resp = request(gateway.port, fctx, "POST", "/ui/action/release", {"user_id": "bob"},
                   headers=fh)
    assert resp.body == {"user_id": "bob", "released": True}
    # A frontend's data-source route is for its own database only.
    assert request(gateway.port, fctx, "POST", "/ui/action/data_source", {"user_id": "bob"},
                   headers=fh).status == 400


def test_the_admin_data_is_one_bounded_page_at_a_time(certs, gateway):
    store = gateway.gateway.store
    now = time.time()
    for i in range(120):
        store.save_user(f"u{i:03d}", "sqlite", f"sqlite:////nowhere/u{i:03d}.db?secret=s{i}",
                        {"path": f"/nowhere/u{i:03d}.db"}, now - i)
    for i in range(130):
        created = now - 10 * i if i < 100 else now - 7200 - i  # 100 within the hour
        store.insert_job(token=f"t{i:03d}" + uuid.uuid4().hex[:8], user_id=f"u{i % 7:03d}",
                         task_type="sql", version="v1", spec={"sql": "x" * 1000},
                         status="SUCCEEDED", message="", created_at=created,
                         started_at=created, finished_at=created + 1,
                         last_fetched_at=now, fetch_timeout_s=60.0, replica="r1")
    ctx = client_context(certs.dir, "front")
    body = request(gateway.port, ctx, "GET", "/ui/data/admin").body
    assert len(body["users"]["rows"]) == 50 and body["users"]["total"] == 120
    assert body["users"]["pages"] == 3 and len(body["jobs"]["rows"]) == 50
    assert body["jobs"]["total"] == 130 and "spec" not in body["jobs"]["rows"][0]
    assert [u["user_id"] for u in body["users"]["rows"]][:2] == ["u000", "u001"]
    assert all(u["host"] == "sqlite (server file)" for u in body["users"]["rows"])
    assert "secret" not in json.dumps(body)
    assert sum(body["chart"]["jobs"]) == 100
    page3 = request(gateway.port, ctx, "GET", "/ui/data/admin?users_page=3&jobs_page=3").body
    assert [u["user_id"] for u in page3["users"]["rows"]] == [f"u{i:03d}" for i in range(100, 120)]
    assert len(page3["jobs"]["rows"]) == 30
    filtered = request(gateway.port, ctx, "GET",
                       "/ui/data/admin?user_prefix=u11&owner=u003&per_page=5").body
    assert [u["user_id"] for u in filtered["users"]["rows"]] == [f"u11{i}" for i in range(5)]
    assert filtered["users"]["total"] == 10
    assert {j["user_id"] for j in filtered["jobs"]["rows"]} == {"u003"}
    assert filtered["jobs"]["total"] == len([i for i in range(130) if i % 7 == 3])
    # The prefix is a prefix, not a pattern.
    assert request(gateway.port, ctx, "GET", "/ui/data/admin?user_prefix=u_%25"
                   ).body["users"]["total"] == 0
    for bad in ("per_page=1000", "users_page=0", "jobs_page=x", "owner=../x"):
        assert request(gateway.port, ctx, "GET", f"/ui/data/admin?{bad}").status == 400, bad


def test_heart_beats_are_counted_per_minute_for_the_chart(certs, gateway, fetch_as):
    alice = fetch_as("alice", gateway.port)
    alice("POST", "/api/create_db")
    for _ in range(3):
        assert alice("GET", "/api/heart_beat").status == 200
    ctx = client_context(certs.dir, "front")
    assert wait_until(lambda: sum(request(gateway.port, ctx, "GET", "/ui/data/admin")
                                  .body["chart"]["heart_beats"]) == 3)
    assert fetch_as("bob", gateway.port)("GET", "/api/heart_beat?user_id=alice").status == 403
    assert sum(request(gateway.port, ctx, "GET", "/ui/data/admin")
               .body["chart"]["heart_beats"]) == 3  # a refused beat does not count


def test_activity_ring_forgets_minutes_older_than_an_hour():
    from sqlflow_playground.handlers.ui import CHART_MINUTES, Activity
    now = [1_000_000 * 60.0]
    ring = Activity(clock=lambda: now[0])
    ring.count("heart_beats", 5)
    now[0] += 60 * 10
    ring.count("heart_beats", 2)
    first, counts = ring.series("heart_beats")
    assert len(counts) == CHART_MINUTES and counts[-1] == 2 and counts[-11] == 5
    assert first == int(now[0] // 60) - CHART_MINUTES + 1
    now[0] += 60 * CHART_MINUTES  # the same slots, an hour later: nothing left
    assert sum(ring.series("heart_beats")[1]) == 0
    ring.count("heart_beats")
    assert ring.series("heart_beats")[1][-1] == 1


@pytest.mark.parametrize("data_source, host", [
    ("mysql://u_1:p%40ss@tcp(db.example:3306)/u_1?maxAllowedPacket=0", "db.example:3306"),
    ("sqlite:////var/lib/x/alice.db?secret=abc", "sqlite (server file)"),
    ("postgresql+psycopg://u:pw@pg.internal:5432/db", "pg.internal:5432"),
    ("", ""),
])
def test_data_source_host_never_shows_the_password(data_source, host):
    from sqlflow_playground.handlers.ui import data_source_host
    assert data_source_host(data_source) == host


# -- the store's page queries on every backend -------------------------------------------

from test_store_backends import BACKENDS, fresh_url  # noqa: E402,F401


@pytest.fixture(params=BACKENDS)
def page_store(request, fresh_url):  # noqa: F811
    from sqlflow_playground.store import Store
    s = Store(fresh_url(request.param))
    yield s
    s.close()


def test_page_queries_on_every_backend(page_store):
    s = page_store
    for user_id in ("a1", "a2", "b", "c", "x_1", "xa1"):
        s.save_user(user_id, "sqlite", "sqlite:///x?secret=y", {}, 1000.0)
    s.begin_provisioning("d", "sqlite", 1000.0, "r/1", 2000.0)
    assert s.count_users_by_status() == {"ready": 6, "provisioning": 1}
    rows, total = s.users_page(0, 2)
    assert [r["user_id"] for r in rows] == ["a1", "a2"] and total == 7
    assert [r["user_id"] for r in s.users_page(2, 3)[0]] == ["b", "c", "d"]
    assert [r["user_id"] for r in s.users_page(0, 10, prefix="x_")[0]] == ["x_1"]  # literal _
    assert s.users_page(0, 10, prefix="%")[1] == 0  # literal %
    assert [r["user_id"] for r in s.users_page(0, 10, prefix="a")[0]] == ["a1", "a2"]
    assert [r["user_id"] for r in s.users_page(0, 10, status="provisioning")[0]] == ["d"]

    since = 60_000.0
    # Minute 0 ends just before since + 60: a database that rounds a CAST would say 1.
    offsets = [0.0, 29.9, 59.9, 60.0, 119.99, 3599.0, -0.5]
    for i, off in enumerate(offsets):
        s.insert_job(token=f"tok{i}", user_id="b" if i % 2 else "c", task_type="sql",
                     version="v1", spec={"sql": "x"}, status="SUCCEEDED" if i % 3 else "FAILED",
                     message=f"m{i}", created_at=since + off, last_fetched_at=since,
                     fetch_timeout_s=60.0, replica="r")
    assert s.jobs_per_minute(since) == {0: 3, 1: 2, 59: 1}
    assert s.count_jobs_by_status() == {"FAILED": 3, "SUCCEEDED": 4}
    assert s.count_jobs_by_status("b") == {"FAILED": 1, "SUCCEEDED": 2}
    newest_first = [f"tok{i}" for i in (5, 4, 3, 2, 1, 0, 6)]
    rows, total = s.jobs_page(0, 3)
    assert [r["token"] for r in rows] == newest_first[:3] and total == 7
    assert set(rows[0]) == set(s.JOB_PAGE_COLUMNS)  # never spec, meta or outputs
    assert [r["token"] for r in s.jobs_page(3, 10)[0]] == newest_first[3:]
    rows, total = s.jobs_page(0, 10, user_id="b", status="SUCCEEDED")
    assert [r["token"] for r in rows] == ["tok5", "tok1"] and total == 2
    assert s.jobs_page(50, 10) == ([], 7)
