"use strict";
// natsched web: one script for every page. Each page reads JSON from /api/..., draws it
// with DOM nodes (never innerHTML: every text from NATS is data, not markup), and redraws
// when /api/live says a run or an agent changed. Graphs and timelines are vis-network and
// vis-timeline (vendored in /static/vendor).

const main = document.getElementById("main");
const FINAL = new Set(["succeeded", "failed", "timed_out", "killed", "skipped", "lost"]);
const COLOURS = {
  queued: "#3b82f6", started: "#06b6d4", succeeded: "#16a34a", skipped: "#ca8a04",
  failed: "#dc2626", timed_out: "#dc2626", killed: "#dc2626", lost: "#dc2626", waiting: "#94a3b8",
};
let session = { user: "", csrf: "", actions: false, login: false };

// ---- small helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function act(name, body) {
  const response = await fetch("/api/actions/" + name, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf },
    body: JSON.stringify(body),
  });
  const reply = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) { say(reply.error || response.statusText, false); return null; }
  return reply;
}

// The page's content; a missing part (null, false) is left out, not written as "null".
function show(...nodes) {
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function say(text, ok) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = !text;
}

const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "-");
const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString() : "-");

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 10) return seconds.toFixed(1) + "s";
  if (seconds < 60) return Math.round(seconds) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
  return Math.floor(seconds / 86400) + "d" + Math.floor((seconds % 86400) / 3600) + "h";
}

const stateTag = (state) => el("span", { class: "state " + state, "data-state": state }, state);
const runLink = (id) => el("a", { href: "/runs/" + encodeURIComponent(id) }, id);
const jobLink = (key) => el("a", { href: "/jobs/" + encodeURIComponent(key) }, key);

function took(run) {
  if (run.duration !== null && run.duration !== undefined) return run.duration.toFixed(3) + "s";
  if (run.started_at && !FINAL.has(run.state)) return age(Date.now() / 1000 - run.started_at) + "…";
  return "-";
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function runRows(runs, withJob) {
  return runs.map((r) => el("tr", { "data-run": r.run_id, "data-state": r.state },
    el("td", {}, runLink(r.run_id)),
    withJob ? el("td", {}, jobLink(r.job)) : null,
    el("td", {}, r.agent), el("td", {}, stateTag(r.state)), el("td", {}, r.trigger),
    el("td", {}, when(r.started_at)), el("td", { class: "num" }, took(r)),
    el("td", { class: "num" }, r.exit_code === null ? "-" : r.exit_code), el("td", {}, (r.reason || "").slice(0, 80))));
}

const RUN_HEADERS = ["run", "job", "agent", "state", "trigger", "started", "took", "exit", "reason"];

function button(label, onclick, cls) {
  return el("button", { type: "button", class: cls || "", onclick }, label);
}

// ---- live updates --------------------------------------------------------------------

let refresh = null; // the current page's redraw, called (at most every second) on updates
let pending = null;
let lastRefresh = 0;
const runListeners = [];

function scheduleRefresh() {
  if (!refresh || pending) return;
  const wait = Math.max(0, 1000 - (Date.now() - lastRefresh));
  pending = setTimeout(async () => {
    pending = null;
    lastRefresh = Date.now();
    try { await refresh(); } catch (error) { say(error.message, false); }
  }, wait);
}

function startLive() {
  const dot = document.getElementById("live");
  const source = new EventSource("/api/live");
  source.onopen = () => { dot.className = "live on"; };
  source.onerror = () => { dot.className = "live off"; };
  source.addEventListener("run", (e) => {
    const event = JSON.parse(e.data);
    for (const listener of runListeners) listener(event);
    scheduleRefresh();
  });
  source.addEventListener("agent", scheduleRefresh);
}

// ---- pages ---------------------------------------------------------------------------

async function overviewPage() {
  const data = await api("/api/overview");
  const leader = data.masters.find((m) => m.leader);
  const masters = table(["master", "role", "term", "lease"], data.masters.map((m) => el("tr", {},
    el("td", {}, m.master), el("td", {}, m.leader ? el("b", {}, "leader") : "standby"), el("td", {}, m.term),
    el("td", {}, m.leader ? "renewed " + age(m.lease_age) + " ago" : "-"))));
  const agents = table(["agent", "seen", "load1", "cpu%", "mem%", "running", "version", "tags / pools", ""],
    data.agents.map((a) => a.incompatible
      ? el("tr", { "data-agent": a.agent }, el("td", {}, a.agent), el("td", { colspan: 8, class: "error" }, a.incompatible))
      : el("tr", { "data-agent": a.agent },
        el("td", {}, el("a", { href: "/jobs?agent=" + encodeURIComponent(a.agent) }, a.agent)),
        el("td", {}, age(a.seen_ago) + " ago"), el("td", { class: "num" }, a.load1.toFixed(2)),
        el("td", { class: "num" }, a.cpu_percent.toFixed(0)), el("td", { class: "num" }, a.memory_percent.toFixed(0)),
        el("td", { class: "num" }, a.running + "/" + a.max_concurrency), el("td", {}, a.version),
        el("td", {}, [...a.tags.map((t) => "tag " + t), ...a.pools.map((p) => "pool " + p)].map((n) => a.unproven.includes(n)
          ? el("span", { class: "badge warn", title: "not proven: the masters send it no run aimed at it" }, n + "?")
          : el("span", { class: "badge" }, n))),
        el("td", {}, a.paused ? el("span", { class: "badge warn" }, "paused") : null, agentActions(a)))));
  const cards = el("div", { class: "cards", id: "counts" }, Object.entries(data.counts).map(([state, n]) =>
    el("div", { class: "card", "data-state": state }, el("div", { class: "n" }, n), stateTag(state))));
  show(
    el("h1", {}, "Overview"),
    el("p", { class: "muted" }, data.masters.length ? `${data.masters.length} master(s), leader ${leader ? leader.master : "none"}` : "no master answers"),
    el("h2", {}, "Masters"), masters,
    el("h2", {}, `Agents (${data.agents.length})`), agents,
    el("h2", {}, "Runs in the last hour"), cards,
    el("h2", {}, "Running"), data.running.length ? table(RUN_HEADERS, runRows(data.running, true)) : el("p", { class: "muted" }, "nothing running"),
    el("h2", {}, "Failures (last hour)"), data.failures.length ? table(RUN_HEADERS, runRows(data.failures, true), { id: "failures" }) : el("p", { class: "muted" }, "no failures"));
}

function agentActions(agent) {
  if (!session.actions) return null;
  const verb = agent.paused ? "resume" : "pause";
  return button(verb, async () => {
    if (await act(verb, { agent: agent.agent })) { say(`agent ${agent.agent}: ${verb}d`, true); scheduleRefresh(); }
  }, "secondary");
}

const JOB_PAGE = 100;

async function jobsPage() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams();
  for (const name of ["group", "agent", "mode"]) if (params.get(name)) query.set(name, params.get(name));
  const data = await api("/api/jobs?" + query);
  const offset = Math.max(0, Number(params.get("offset") || 0));
  const shown = data.jobs.slice(offset, offset + JOB_PAGE);
  const filters = el("form", { class: "filters", method: "get", action: "/jobs" },
    ["group", "agent"].map((name) => el("label", {}, name, el("input", { name, value: params.get(name) || "" }))),
    el("label", {}, "mode", el("select", { name: "mode" }, ["", "mirror", "slave", "load-balance"].map((m) =>
      el("option", { value: m, selected: params.get("mode") === m }, m || "any")))),
    el("button", { type: "submit" }, "Filter"));
  const rows = shown.map((j) => el("tr", { "data-job": j.key },
    el("td", {}, jobLink(j.key)), el("td", {}, j.mode),
    el("td", {}, Object.entries(j.targets).map(([k, v]) => el("span", { class: "badge" }, `${k}: ${v.join(",")}`))),
    el("td", {}, j.triggers.map(describeTrigger).join("; ") || "manual"),
    el("td", {}, j.enabled ? "" : el("span", { class: "badge warn" }, "disabled"), j.paused ? el("span", { class: "badge warn" }, "paused") : null)));
  show(el("h1", {}, "Jobs"), filters,
    data.invalid.length ? el("p", { class: "error" }, "invalid definitions: " + data.invalid.join("; ")) : null,
    table(["job", "mode", "targets", "triggers", ""], rows, { id: "jobs" }),
    pager(offset, JOB_PAGE, data.jobs.length, "/jobs", params),
    data.truncated ? el("p", { class: "muted" }, "the master lists at most 5000 jobs: filter by group") : null);
}

function describeTrigger(t) {
  if (t.cron) return "cron " + t.cron + (t.timezone ? " " + t.timezone : "");
  if (t.every !== undefined) return "every " + t.every + "s";
  if (t.at) return "at " + t.at;
  if (t.after) return "after " + t.after.join(", ") + (t.wait === "all" ? " (all)" : "");
  if (t.file) return "file " + t.file;
  if (t.subject) return "subject " + t.subject;
  return Object.keys(t).join(",");
}

function pager(offset, size, total, path, params) {
  const link = (to) => { const p = new URLSearchParams(params); p.set("offset", to); return path + "?" + p; };
  return el("div", { class: "pager" },
    offset > 0 ? el("a", { href: link(Math.max(0, offset - size)) }, "← newer") : null,
    el("span", { class: "muted", id: "page-info" }, total ? `${offset + 1}–${Math.min(offset + size, total)} of ${total}` : "none"),
    offset + size < total ? el("a", { href: link(offset + size) }, "older →") : null);
}

async function jobPage(key) {
  const data = await api("/api/jobs/" + encodeURIComponent(key));
  const spec = data.spec;
  const rows = [["mode", spec.mode || "mirror"], ["command", Array.isArray(spec.command) ? spec.command.join(" ") : spec.command],
    ["targets", JSON.stringify(spec.targets)], ["triggers", (spec.triggers || []).map(describeTrigger).join("; ") || "manual only"],
    ["enabled", spec.enabled === false ? "no" : "yes"], ["paused", data.paused ? `yes (${data.paused.mode}) ${data.paused.note || ""}` : "no"],
    ["revision", data.revision]];
  for (const name of ["timeout", "overlap", "misfire", "retries", "env", "cwd", "user", "calendar", "notify", "description"]) {
    if (spec[name] !== undefined) rows.push([name, typeof spec[name] === "object" ? JSON.stringify(spec[name]) : spec[name]]);
  }
  show(el("h1", {}, "Job ", el("code", {}, data.key)),
    jobActions(data),
    el("dl", { class: "spec" }, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    el("h2", {}, "Next fire times"),
    data.next_fires.length ? el("ul", { id: "next-fires" }, data.next_fires.map((t) => el("li", {}, when(t)))) : el("p", { class: "muted" }, "no time trigger"),
    el("h2", {}, "Last runs"),
    table(RUN_HEADERS.filter((h) => h !== "job"), runRows(data.runs, false), { id: "runs" }),
    el("p", {}, el("a", { href: "/runs?job=" + encodeURIComponent(data.key) }, "all runs of this job")));
}

function jobActions(data) {
  if (!session.actions) return null;
  const key = data.key;
  const args = data.allows.args ? el("input", { id: "run-args", placeholder: "extra args, space-separated" }) : null;
  const env = data.allows.env.length ? el("input", { id: "run-env", placeholder: data.allows.env.map((n) => n + "=…").join(" ") }) : null;
  const run = async () => {
    const body = { job: key };
    if (args && args.value.trim()) body.args = args.value.trim().split(/\s+/);
    if (env && env.value.trim()) body.env = Object.fromEntries(env.value.trim().split(/\s+/).map((p) => [p.split("=")[0], p.split("=").slice(1).join("=")]));
    const reply = await act("run", body);
    if (!reply) return;
    const started = reply.runs.filter((r) => r.ok);
    say(reply.runs.map((r) => `${r.run_id || "-"} on ${r.agent || "-"}: ${r.ok ? "started" : r.state + " " + (r.reason || "")}`).join("; "), started.length > 0);
    if (started.length === 1) location.href = "/runs/" + encodeURIComponent(started[0].run_id);
  };
  const simple = (name, body, done) => async () => { if (await act(name, body)) { say(`${key}: ${done}`, true); await refresh(); } };
  return el("div", { class: "actions" }, button("Run now", run), args, env,
    data.paused ? button("Resume", simple("resume", { job: key }, "resumed"), "secondary") : button("Pause", simple("pause", { job: key }, "paused"), "secondary"),
    data.spec.enabled === false ? button("Enable", simple("enable", { job: key }, "enabled"), "secondary") : button("Disable", simple("disable", { job: key }, "disabled"), "secondary"));
}

const RUN_PAGE = 100;

async function runsPage() {
  const params = new URLSearchParams(location.search);
  const query = new URLSearchParams({ limit: RUN_PAGE, offset: params.get("offset") || 0, hours: params.get("hours") || 24 });
  for (const name of ["job", "agent", "state"]) if (params.get(name)) query.set(name, params.get(name));
  const data = await api("/api/runs?" + query);
  const filters = el("form", { class: "filters", method: "get", action: "/runs" },
    ["job", "agent"].map((name) => el("label", {}, name, el("input", { name, value: params.get(name) || "", placeholder: name === "job" ? "group.job" : "" }))),
    el("label", {}, "state", el("select", { name: "state" }, ["", ...Object.keys(COLOURS).filter((s) => s !== "waiting")].map((s) =>
      el("option", { value: s, selected: params.get("state") === s }, s || "any")))),
    el("label", {}, "last hours", el("input", { name: "hours", type: "number", min: "0.1", step: "any", value: params.get("hours") || 24 })),
    el("button", { type: "submit" }, "Filter"));
  show(el("h1", {}, "Runs"), filters,
    table(RUN_HEADERS, runRows(data.runs, true), { id: "runs" }),
    pager(data.offset, RUN_PAGE, data.total, "/runs", params));
}

async function runPage(runId) {
  const data = await api("/api/runs/" + encodeURIComponent(runId));
  const run = data.run;
  const history = table(["state", "at", "reason"], data.history.map((h) => el("tr", { "data-state": h.state },
    el("td", {}, stateTag(h.state)), el("td", {}, when(h.at)), el("td", {}, h.reason))), { id: "history" });
  const facts = [["job", jobLink(run.job)], ["agent", run.agent], ["host", run.host], ["trigger", run.trigger],
    ["attempt", run.attempt], ["scheduled", when(run.scheduled_at)], ["started", when(run.started_at)],
    ["ended", when(run.ended_at)], ["took", took(run)], ["exit code", run.exit_code ?? "-"], ["reason", run.reason || "-"]];
  if (data.chain_id) facts.push(["chain", el("a", { href: "/chains/" + encodeURIComponent(data.chain_id) }, data.chain_id)]);
  const cancel = session.actions && !FINAL.has(run.state)
    ? button("Cancel", async () => { if (await act("cancel", { run_id: runId })) say(`${runId}: cancel sent`, true); }, "danger") : null;
  const header = el("h1", {}, "Run ", el("code", {}, runId), " ", stateTag(run.state));
  const existing = document.getElementById("output");
  const output = existing || el("pre", { class: "output", id: "output" });
  show(header, el("div", { class: "actions" }, cancel),
    el("dl", { class: "spec" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    el("h2", {}, "States"), history,
    el("h2", {}, "Output ", el("span", { class: "muted", id: "output-state" }, existing ? document.getElementById("output-state")?.textContent || "" : "")), output);
  if (!existing) followOutput(runId, output);
}

function followOutput(runId, output) {
  const decoder = new TextDecoder();
  const source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/output");
  const status = (text) => { const s = document.getElementById("output-state"); if (s) s.textContent = text; };
  status("(live)");
  source.addEventListener("chunk", (e) => {
    const bytes = Uint8Array.from(atob(JSON.parse(e.data).data), (c) => c.charCodeAt(0));
    output.append(decoder.decode(bytes, { stream: true }));
    output.scrollTop = output.scrollHeight;
  });
  source.addEventListener("end", () => { source.close(); status("(ended)"); output.dataset.ended = "1"; });
  source.addEventListener("failed", (e) => { source.close(); status(JSON.parse(e.data).error); });
}

let network = null;

async function chainPage(chainId) {
  const data = await api("/api/chains/" + encodeURIComponent(chainId));
  const nodes = data.nodes.map((r) => ({
    id: r.run_id,
    label: `${r.job}\n${r.agent}\n${r.state} ${took(r)}`,
    color: { background: "#fff", border: COLOURS[r.state] || "#64748b" },
    borderWidth: 3, shape: "box", font: { multi: false, face: "monospace", size: 13 },
    title: r.run_id,
  }));
  const edges = data.edges.map((e) => ({ from: e.from, to: e.to, arrows: "to" }));
  for (const w of data.waiting) {
    const id = "waiting:" + w.job;
    nodes.push({ id, label: `${w.job}\nfan-in waiting`, shape: "box", borderWidth: 2, shapeProperties: { borderDashes: [6, 4] },
      color: { background: "#f1f5f9", border: COLOURS.waiting }, font: { face: "monospace", size: 13 } });
    for (const parent of w.parents) edges.push({ from: parent, to: id, arrows: "to", dashes: true });
  }
  const list = table(["run", "job", "agent", "state", "started", "took"], data.nodes.map((r) => el("tr", { "data-run": r.run_id, "data-state": r.state, class: "chain-node" },
    el("td", {}, runLink(r.run_id)), el("td", {}, jobLink(r.job)), el("td", {}, r.agent), el("td", {}, stateTag(r.state)),
    el("td", {}, when(r.started_at)), el("td", { class: "num" }, took(r)))), { id: "chain-runs" });
  const graph = el("div", { id: "graph" });
  if (network) network.destroy();
  show(el("h1", {}, "Chain ", el("code", {}, chainId), " ", stateTag(data.state)), graph,
    data.waiting.length ? el("p", {}, "fan-in waiting: ", data.waiting.map((w) => el("span", { class: "badge warn", "data-waiting": w.job }, w.job))) : null,
    el("h2", {}, "Runs"), list);
  network = new vis.Network(graph, { nodes: new vis.DataSet(nodes), edges: new vis.DataSet(edges) }, {
    layout: { hierarchical: { direction: "LR", sortMethod: "directed", levelSeparation: 230, nodeSpacing: 110 } },
    physics: false, interaction: { dragNodes: false },
  });
  network.on("doubleClick", (p) => { if (p.nodes.length && !String(p.nodes[0]).startsWith("waiting:")) location.href = "/runs/" + encodeURIComponent(p.nodes[0]); });
  window.natschedChain = { nodes: nodes.length, runs: data.nodes.length };
}

let timelineView = null;

async function timelinePage() {
  const params = new URLSearchParams(location.search);
  const hours = Number(params.get("hours") || 1);
  const end = Date.now() / 1000;
  const agentFilter = params.get("agent") || "";
  const controls = el("form", { class: "filters", method: "get", action: "/timeline" },
    el("label", {}, "window", el("select", { name: "hours" }, [[0.05, "3 min"], [0.25, "15 min"], [1, "1 hour"], [6, "6 hours"], [24, "24 hours"]].map(([h, label]) =>
      el("option", { value: h, selected: hours === h }, label)))),
    el("label", {}, "agent", el("input", { name: "agent", value: agentFilter })),
    el("button", { type: "submit" }, "Show"));
  const box = el("div", { id: "timeline" });
  const note = el("p", { class: "muted", id: "timeline-note" });
  show(el("h1", {}, "Timeline"), controls, box, note,
    el("p", { class: "muted" }, "One row per agent; an orange left edge marks a start more than 1 s after its scheduled time. Drag or zoom to move the window; double-click a run to open it."));
  const items = new vis.DataSet();
  const groups = new vis.DataSet();
  timelineView = new vis.Timeline(box, items, groups, {
    // A little room after now: runs going on are not drawn against the edge.
    start: new Date((end - hours * 3600) * 1000), end: new Date((end + hours * 180) * 1000), stack: true, zoomMin: 10000,
    orientation: "top", tooltip: { followMouse: true }, selectable: true,
  });
  timelineView.on("doubleClick", (p) => { if (p.item) location.href = "/runs/" + encodeURIComponent(p.item); });
  const load = async () => {
    const range = timelineView.getWindow();
    const query = new URLSearchParams({ start: range.start.getTime() / 1000, end: range.end.getTime() / 1000 });
    if (agentFilter) query.set("agent", agentFilter);
    const data = await api("/api/timeline?" + query);
    const agents = [...new Set(data.items.map((r) => r.agent))].sort();
    groups.update(agents.map((a) => ({ id: a, content: a })));
    items.clear();
    items.add(data.items.map((r) => ({
      id: r.run_id, group: r.agent, content: r.job, start: new Date(r.start * 1000), end: new Date(r.end * 1000),
      type: r.end - r.start < 0.001 ? "point" : "range",
      className: r.state + (r.scheduled_at && r.started_at && r.started_at - r.scheduled_at > 1 ? " late" : ""),
      title: `${r.job} on ${r.agent}: ${r.state}, ${took(r)}, started ${when(r.started_at)}` +
        (r.scheduled_at ? `, scheduled ${clock(r.scheduled_at)}` : ""),
    })));
    note.textContent = `${data.items.length} run(s) in this window` + (data.truncated ? " (the newest 5000: zoom in to see all)" : "");
    box.dataset.items = String(data.items.length);
  };
  let reload = null;
  timelineView.on("rangechanged", () => { clearTimeout(reload); reload = setTimeout(() => load().catch((e) => say(e.message, false)), 300); });
  await load();
  refresh = load;
}

// ---- routing -------------------------------------------------------------------------

const ROUTES = [
  [/^\/$/, "overview", () => overviewPage],
  [/^\/jobs$/, "jobs", () => jobsPage],
  [/^\/jobs\/(.+)$/, "jobs", (m) => () => jobPage(decodeURIComponent(m[1]))],
  [/^\/runs$/, "runs", () => runsPage],
  [/^\/runs\/(.+)$/, "runs", (m) => () => runPage(decodeURIComponent(m[1]))],
  [/^\/chains\/(.+)$/, "runs", (m) => () => chainPage(decodeURIComponent(m[1]))],
  [/^\/timeline$/, "timeline", () => timelinePage],
];

async function start() {
  session = await api("/api/session");
  const who = document.getElementById("who");
  who.append(session.user + (session.actions ? " (admin actions on)" : " (read-only)"));
  if (session.login) {
    who.append(" ", el("form", { method: "post", action: "/logout", style: "display:inline" }, el("button", { class: "secondary", type: "submit" }, "Log out")));
  }
  for (const [pattern, nav, make] of ROUTES) {
    const match = location.pathname.match(pattern);
    if (!match) continue;
    document.querySelector(`[data-nav="${nav}"]`)?.classList.add("active");
    const draw = make(match);
    refresh = draw;
    try { await draw(); } catch (error) { show(el("p", { class: "error" }, error.message)); }
    document.body.dataset.ready = "1";
    startLive();
    return;
  }
  show(el("p", { class: "error" }, "no such page"));
}

start().catch((error) => say(error.message, false));
