// sqlflow-playground dashboard. Plain JavaScript, no library, nothing from another host.
// Every value from the server enters the page through textContent, an input's value or
// an attribute set with setAttribute: never as HTML (the CSP forbids inline script too).
"use strict";
(function () {
  // ---------------------------------------------------------------- helpers
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function $(id) { return document.getElementById(id); }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function xsrf() {
    const meta = document.querySelector('meta[name="xsrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  class HttpError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function answer(resp) {
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && data.error ? data.error.message : resp.status + " " + resp.statusText;
      throw new HttpError(resp.status, msg);
    }
    return { status: resp.status, data: data };
  }
  async function getJSON(path) {
    return (await answer(await fetch(path, { credentials: "same-origin" }))).data;
  }
  async function post(path, body) {
    return answer(await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": xsrf() },
      body: JSON.stringify(body || {}),
    }));
  }

  let noticeTimer = null;
  function notice(text, bad) {
    const box = $("notice");
    box.textContent = String(text);
    box.className = bad ? "notice bad" : "notice";
    box.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(function () { box.hidden = true; }, bad ? 8000 : 4000);
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad(Math.floor(s % 3600 / 60)) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }
  function clock(t) {
    const d = new Date(t * 1000);
    return pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
  function when(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }

  function cell(row, text, cls) { const td = el("td", cls, text); row.appendChild(td); return td; }
  function statusCell(row, status) { return cell(row, status, "status status-" + status); }
  function jobLink(token) {
    const a = el("a", "mono", token.slice(0, 12) + "…");
    a.setAttribute("href", "/ui/jobs/" + encodeURIComponent(token));
    a.setAttribute("title", token);
    return a;
  }
  function emptyRow(body, columns, text) {
    const tr = el("tr");
    const td = cell(tr, text, "empty");
    td.setAttribute("colspan", String(columns));
    body.appendChild(tr);
  }
  function pager(node, info, go) {
    clear(node);
    const prev = el("button", "", "‹ Previous");
    prev.type = "button";
    prev.disabled = info.page <= 1;
    prev.addEventListener("click", function () { go(info.page - 1); });
    const next = el("button", "", "Next ›");
    next.type = "button";
    next.disabled = info.page >= info.pages;
    next.addEventListener("click", function () { go(info.page + 1); });
    node.appendChild(prev);
    node.appendChild(el("span", "page-info",
      "page " + info.page + " of " + info.pages + " · " + info.total + " in all"));
    node.appendChild(next);
  }
  function confirmed(question) { return window.confirm(question); }

  // ------------------------------------------------------- job output, live
  // Responses as SQLFlow streams them: {message}, {head}, {row}, {eoe}. Tables are
  // tables; messages are text. At most maxRows rows of a table are drawn.
  class OutputView {
    constructor(node, maxRows) {
      this.node = node; this.maxRows = maxRows || 1000;
      this.table = null; this.body = null; this.pre = null;
      this.rows = 0; this.tables = 0; this.lastRows = null; this.hidden = 0; this.note = null;
    }
    add(r) {
      if (r === null || typeof r !== "object") { this.text(JSON.stringify(r)); return; }
      if ("message" in r) this.text(typeof r.message === "string" ? r.message : JSON.stringify(r.message));
      else if (Array.isArray(r.head)) this.startTable(r.head);
      else if (Array.isArray(r.row)) { if (!this.table) this.startTable(null); this.addRow(r.row); }
      else if (r.eoe) this.endTable();
      else this.text(JSON.stringify(r));
    }
    text(t) {
      if (this.table) this.endTable();
      if (!this.pre) { this.pre = el("pre", "msg"); this.node.appendChild(this.pre); }
      this.pre.appendChild(document.createTextNode(t.endsWith("\n") ? t : t + "\n"));
    }
    startTable(head) {
      this.endTable();
      this.pre = null;
      this.table = el("table", "grid result");
      this.tables += 1;
      this.rows = 0; this.hidden = 0;
      if (head) {
        const thead = el("thead"); const tr = el("tr");
        for (const name of head) tr.appendChild(el("th", "", typeof name === "string" ? name : JSON.stringify(name)));
        thead.appendChild(tr); this.table.appendChild(thead);
      }
      this.body = el("tbody");
      this.table.appendChild(this.body);
      this.node.appendChild(this.table);
      this.note = el("div", "rows-note");
      this.node.appendChild(this.note);
    }
    addRow(values) {
      this.rows += 1;
      if (this.rows > this.maxRows) { this.hidden += 1; }
      else {
        const tr = el("tr");
        for (const v of values) {
          if (v === null) cell(tr, "NULL", "null");
          else cell(tr, typeof v === "object" ? JSON.stringify(v) : String(v));
        }
        this.body.appendChild(tr);
      }
      this.note.textContent = this.rows + (this.rows === 1 ? " row" : " rows") +
        (this.hidden ? " (the first " + this.maxRows + " shown)" : "");
    }
    endTable() {
      if (this.table) this.lastRows = this.rows;
      this.table = null; this.body = null;
    }
    error(t) { this.node.appendChild(el("div", "error", t)); }
  }

  // Follows GET /api/jobs/{token} with its cursor, each request held up to 20 s.
  async function follow(token, view, onPage) {
    let since = "";
    let failures = 0;
    for (;;) {
      let page;
      try {
        page = await getJSON("/api/jobs/" + encodeURIComponent(token) + "?since=" +
          encodeURIComponent(since) + "&wait=20");
        failures = 0;
      } catch (e) {
        if (e.status === 404 || e.status === 403) { view.error(e.message); return null; }
        failures += 1;
        onPage(null, e);
        await sleep(Math.min(10000, 1000 * failures));
        continue;
      }
      for (const r of page.responses) view.add(r);
      since = page.next;
      onPage(page, null);
      if (page.eof) { view.endTable(); return page; }
    }
  }

  function elapsed(job) {
    const start = job.started_at || job.created_at;
    if (!start) return null;
    return (job.finished_at || Date.now() / 1000) - start;
  }

  async function cancelJob(token, after) {
    if (!confirmed("Cancel job " + token + "?")) return;
    try {
      const r = await post("/ui/action/cancel", { token: token });
      notice("Job " + token.slice(0, 12) + "… is " + r.data.status);
    } catch (e) { notice("Cancel failed: " + e.message, true); }
    if (after) after();
  }

  function jobButtons(tr, job, after) {
    const td = cell(tr, "");
    if (job.status === "PENDING" || job.status === "RUNNING") {
      const b = el("button", "danger cancel", "Cancel");
      b.type = "button";
      b.setAttribute("data-token", job.token);
      b.addEventListener("click", function () { cancelJob(job.token, after); });
      td.appendChild(b);
    }
  }

  // ------------------------------------------------------------------ admin
  function barChart(node, counts, cls, firstMinute) {
    clear(node);
    const W = 360, H = 90, n = counts.length, bw = W / n;
    const max = Math.max(1, ...counts);
    const chart = svg("svg", { width: W, height: H + 14, viewBox: "0 0 " + W + " " + (H + 14),
      role: "img", "aria-label": cls + " per minute, at most " + max });
    counts.forEach(function (c, i) {
      if (!c) return;
      const h = Math.max(1, Math.round(c / max * (H - 14)));
      const bar = svg("rect", { x: (i * bw + 0.5).toFixed(1), y: H - h,
        width: Math.max(1, bw - 1).toFixed(1), height: h, class: "bar " + cls });
      const title = svg("title");
      title.textContent = c + " at " + clock(firstMinute + i * 60);
      bar.appendChild(title);
      chart.appendChild(bar);
    });
    const top = svg("text", { x: 3, y: 10 }); top.textContent = "max " + max + "/min";
    const left = svg("text", { x: 3, y: H + 11 }); left.textContent = clock(firstMinute);
    const right = svg("text", { x: W - 3, y: H + 11, "text-anchor": "end" }); right.textContent = "now";
    chart.appendChild(top); chart.appendChild(left); chart.appendChild(right);
    node.appendChild(chart);
  }

  function sum(obj) { return Object.values(obj || {}).reduce(function (a, b) { return a + b; }, 0); }
  function breakdown(obj) {
    return Object.keys(obj || {}).sort().map(function (k) { return obj[k] + " " + k; }).join(" · ");
  }

  function adminPage() {
    const state = { users_page: 1, jobs_page: 1, user_prefix: "", user_status: "", owner: "",
                    job_status: "" };
    let loading = null;
    let asked = 0;  // an answer to an older request than the last is dropped
    async function load() {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(state)) if (v !== "" && v !== null) q.set(k, String(v));
      const mine = ++asked;
      let d;
      try { d = await getJSON("/ui/data/admin?" + q.toString()); }
      catch (e) { if (mine === asked) notice("Could not load: " + e.message, true); return; }
      if (mine !== asked) return;
      $("count-users").textContent = String(sum(d.counts.users));
      $("count-users-detail").textContent = breakdown(d.counts.users);
      $("count-jobs").textContent = String(sum(d.counts.jobs));
      $("count-jobs-detail").textContent = breakdown(d.counts.jobs);
      barChart($("chart-jobs"), d.chart.jobs, "jobs", d.chart.first_minute);
      barChart($("chart-beats"), d.chart.heart_beats, "beats", d.chart.first_minute);
      $("chart-jobs-total").textContent = "· " + sum(d.chart.jobs) + " in the hour";
      $("chart-beats-total").textContent = "· " + sum(d.chart.heart_beats) + " in the hour";
      $("chart-replica").textContent = d.chart.replica;
      renderUsers(d);
      renderJobs(d);
      document.body.setAttribute("data-loaded", String(Date.now()));
    }
    function reload() { loading = load(); return loading; }

    function renderUsers(d) {
      const body = $("users-body");
      clear(body);
      if (!d.users.rows.length) emptyRow(body, 7, "no users");
      for (const u of d.users.rows) {
        const tr = el("tr");
        tr.setAttribute("data-user", u.user_id);
        cell(tr, u.user_id, "mono user-id");
        statusCell(tr, u.status);
        cell(tr, u.host || "–", "mono");
        cell(tr, duration(d.now - u.last_seen_at) + " ago").setAttribute("title", when(u.last_seen_at));
        cell(tr, u.idle_left_s === null ? "–" : duration(u.idle_left_s));
        cell(tr, when(u.created_at));
        const td = cell(tr, "");
        if (u.status !== "provisioning" && u.status !== "releasing") {
          const b = el("button", "danger release", "Release");
          b.type = "button";
          b.addEventListener("click", async function () {
            if (!confirmed("Release the database of " + u.user_id + "? Its data is deleted.")) return;
            b.disabled = true;
            try {
              const r = await post("/ui/action/release", { user_id: u.user_id });
              notice(r.data.released ? "Released the database of " + u.user_id
                                     : u.user_id + " had no database");
            } catch (e) { notice("Release failed: " + e.message, true); }
            reload();
          });
          td.appendChild(b);
        }
        body.appendChild(tr);
      }
      pager($("users-pager"), d.users, function (p) { state.users_page = p; reload(); });
    }

    function renderJobs(d) {
      const body = $("jobs-body");
      clear(body);
      if (!d.jobs.rows.length) emptyRow(body, 9, "no jobs");
      for (const j of d.jobs.rows) {
        const tr = el("tr");
        tr.setAttribute("data-token", j.token);
        cell(tr, "").appendChild(jobLink(j.token));
        cell(tr, j.user_id, "mono owner");
        cell(tr, j.task_type + " " + j.version);
        statusCell(tr, j.status);
        cell(tr, duration(j.age_s));
        cell(tr, duration(j.runtime_s));
        cell(tr, j.replica, "mono");
        cell(tr, j.message, "msg");
        jobButtons(tr, j, reload);
        body.appendChild(tr);
      }
      pager($("jobs-pager"), d.jobs, function (p) { state.jobs_page = p; reload(); });
    }

    // Every filter's current value is read when the (debounced) reload comes, so quick
    // changes to several filters all count; a list whose filter changed starts at page 1.
    const filters = [["user-prefix", "user_prefix", "users_page"],
                     ["user-status", "user_status", "users_page"],
                     ["job-owner", "owner", "jobs_page"],
                     ["job-status", "job_status", "jobs_page"]];
    let typing = null;
    function applyFilters() {
      for (const [id, key, pageKey] of filters) {
        const value = $(id).value.trim();
        if (state[key] !== value) { state[key] = value; state[pageKey] = 1; }
      }
      reload();
    }
    for (const [id] of filters) {
      const input = $(id);
      input.addEventListener(input.tagName === "SELECT" ? "change" : "input", function () {
        clearTimeout(typing);
        typing = setTimeout(applyFilters, 250);
      });
    }
    $("refresh").addEventListener("click", reload);
    reload();
    setInterval(function () { if (document.visibilityState === "visible") reload(); }, 30000);
  }

  // ------------------------------------------------------------------- user
  function userPage() {
    let jobsPage = 1;
    let db = null;
    let asked = 0;  // an answer to an older request than the last is dropped
    async function load() {
      const mine = ++asked;
      let d;
      try { d = await getJSON("/ui/data/me?jobs_page=" + jobsPage); }
      catch (e) { if (mine === asked) notice("Could not load: " + e.message, true); return null; }
      if (mine !== asked) return null;
      db = d.database;
      $("db-status").textContent = db ? db.status : "none";
      $("db-status").className = "status status-" + (db ? db.status : "none");
      $("db-host").textContent = db && db.host ? db.host : "–";
      $("db-seen").textContent = db ? duration(d.now - db.last_seen_at) + " ago" : "–";
      $("db-idle").textContent = db && db.idle_left_s !== null ? duration(db.idle_left_s) : "–";
      $("db-create").disabled = !!db && db.status !== "lost";
      $("db-release").disabled = !db || db.status === "releasing";
      $("db-show").disabled = !db || db.status !== "ready";
      const body = $("jobs-body");
      clear(body);
      if (!d.jobs.rows.length) emptyRow(body, 7, "no jobs yet");
      for (const j of d.jobs.rows) {
        const tr = el("tr");
        tr.setAttribute("data-token", j.token);
        cell(tr, "").appendChild(jobLink(j.token));
        cell(tr, j.task_type + " " + j.version);
        statusCell(tr, j.status);
        cell(tr, duration(j.age_s));
        cell(tr, duration(j.runtime_s));
        cell(tr, j.message, "msg");
        jobButtons(tr, j, load);
        body.appendChild(tr);
      }
      pager($("jobs-pager"), d.jobs, function (p) { jobsPage = p; load(); });
      document.body.setAttribute("data-loaded", String(Date.now()));
      return d;
    }

    $("db-create").addEventListener("click", async function () {
      $("db-create").disabled = true;
      try {
        let r = await post("/ui/action/create_db", {});
        while (r.status === 202) {
          $("db-status").textContent = "provisioning";
          await sleep(1000);
          r = await post("/ui/action/create_db", {});
        }
        notice("Your database is ready");
      } catch (e) { notice("Create failed: " + e.message, true); }
      load();
    });
    $("db-release").addEventListener("click", async function () {
      if (!confirmed("Release your database? Its data is deleted.")) return;
      hideSecret();
      try {
        const r = await post("/ui/action/release", {});
        notice(r.data.released ? "Your database was released" : "You had no database");
      } catch (e) { notice("Release failed: " + e.message, true); }
      load();
    });
    function hideSecret() { $("ds-value").value = ""; $("ds-box").hidden = true; }
    $("db-show").addEventListener("click", async function () {
      try {
        const r = await post("/ui/action/data_source", {});
        $("ds-value").value = r.data.data_source;
        $("ds-box").hidden = false;
        $("ds-value").select();
      } catch (e) { notice("Could not read the data source: " + e.message, true); }
    });
    $("ds-hide").addEventListener("click", hideSecret);
    $("ds-copy").addEventListener("click", async function () {
      const value = $("ds-value").value;
      try {
        await navigator.clipboard.writeText(value);
      } catch (e) {
        $("ds-value").select();
        document.execCommand("copy");
      }
      notice("Copied the data source");
    });

    $("sql-run").addEventListener("click", async function () {
      const sql = $("sql").value;
      const out = $("sql-output");
      const summary = $("sql-summary");
      clear(out);
      if (!sql.trim()) { summary.textContent = "type a statement first"; return; }
      $("sql-run").disabled = true;
      summary.textContent = "submitting…";
      summary.removeAttribute("data-status");
      try {
        const r = await post("/ui/action/sql", { sql: sql });
        const token = r.data.token;
        const view = new OutputView(out, 1000);
        const link = jobLink(token);
        const last = await follow(token, view, function (page) {
          if (page) summary.textContent = page.status + " · following job " + token.slice(0, 12) + "…";
        });
        if (last) {
          clear(summary);
          const rows = view.lastRows === null ? 0 : view.lastRows;
          summary.appendChild(el("span", "status status-" + last.status, last.status));
          summary.appendChild(el("span", "sql-rows", " · " + rows + (rows === 1 ? " row" : " rows")));
          summary.appendChild(el("span", "sql-elapsed", " · " + (elapsed(last) || 0).toFixed(3) + " s · "));
          summary.appendChild(link);
          summary.setAttribute("data-status", last.status);
          if (last.message && last.status !== "SUCCEEDED") view.error(last.message);
        }
      } catch (e) {
        summary.textContent = "failed: " + e.message;
        summary.setAttribute("data-status", "ERROR");
      }
      $("sql-run").disabled = false;
      load();
    });
    $("refresh").addEventListener("click", load);
    load();
    setInterval(function () { if (document.visibilityState === "visible") load(); }, 30000);
  }

  // -------------------------------------------------------------------- job
  function jobPage() {
    const token = document.body.getAttribute("data-token");
    const view = new OutputView($("job-output"), 5000);
    let current = null;
    function show(page) {
      current = page;
      $("job-status").textContent = page.status;
      $("job-status").className = "status status-" + page.status;
      $("job-message").textContent = page.message || "";
      $("job-elapsed").textContent = duration(elapsed(page));
      const cancel = $("job-cancel");
      if (cancel) cancel.disabled = page.status !== "PENDING" && page.status !== "RUNNING";
    }
    const cancel = $("job-cancel");
    if (cancel) cancel.addEventListener("click", function () { cancelJob(token, null); });
    $("job-follow").textContent = "following output live…";
    const ticker = setInterval(function () {
      if (current && !current.finished_at) $("job-elapsed").textContent = duration(elapsed(current));
    }, 1000);
    follow(token, view, function (page, err) {
      if (page) show(page);
      else $("job-follow").textContent = "connection lost, retrying: " + err.message;
    }).then(function (last) {
      clearInterval(ticker);
      $("job-follow").textContent = last ? "finished: all output shown" : "";
      document.body.setAttribute("data-eof", last ? "true" : "error");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const page = document.body.getAttribute("data-page");
    if (page === "admin") adminPage();
    else if (page === "user") userPage();
    else if (page === "job") jobPage();
  });
})();
