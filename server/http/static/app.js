// The registry dashboard: the fleet of one namespace, kept live by the SSE watch
// (/v1/watch), with counts from /v1/stats and operator actions through the JSON API.
"use strict";

const ROW = 36;                       // px, as --row in style.css
const HISTORY_MS = 10 * 60 * 1000;    // telemetry kept per agent for the chart
const SWEEP_MS = 15000;               // heartbeats are not events: re-read ages and telemetry
const STATS_MS = 5000;
// the open agent is re-read this often (ms; ?refresh= changes it)
const DETAIL_MS = Math.max(200, Number(new URLSearchParams(location.search).get("refresh")) || 2000);
const FLASH_MS = 1600;                // how long an added/changed row stays highlighted
const REMOVE_MS = 1400;               // how long a removed row stays, struck through
const REMOVED = new Set(["DEREGISTERED", "EXPIRED", "EVICTED"]);
const CHANGED = new Set(["REGISTERED", "UPDATED", "STATUS_CHANGED"]);
const OUT_OF_RANGE = 11;
const STATUS_ORDER = { UNHEALTHY: 0, DEGRADED: 1, HEALTHY: 2 };

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = {
  ns: params.get("namespace") || sessionStorage.getItem("sr.namespace") || "default",
  token: sessionStorage.getItem("sr.token") || "",
  session: null,            // {auth, name, scope, namespace} of the token
  agents: new Map(),        // agent_id -> AgentInfo (JSON)
  snapshot: null,           // Map being filled while a snapshot arrives
  flash: new Map(),         // agent_id -> {cls, until}
  history: new Map(),       // agent_id -> [{t, sr, dur}]
  events: new Map(),        // agent_id -> recent events (newest first)
  activity: [],             // recent events of the namespace
  sort: { key: "agent_id", dir: 1 },
  selected: "",
  revision: "",
  stats: [],
  source: null,
  view: [],                 // the filtered, sorted ids
};

// -- the JSON API --------------------------------------------------------------------------
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.message || response.statusText);
    error.status = response.status;
    error.code = data.code;
    throw error;
  }
  return data;
}

// -- the watch -----------------------------------------------------------------------------
function connect() {
  if (state.source) state.source.close();
  let url = "/v1/watch?namespace=" + encodeURIComponent(state.ns);
  if (state.token) url += "&access_token=" + encodeURIComponent(state.token);
  const source = new EventSource(url);  // resumes by itself with Last-Event-ID
  state.source = source;
  state.snapshot = null;
  setLive("reconnecting", "connecting");
  source.onopen = () => setLive("live", "live");
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  source.addEventListener("status", (message) => {
    const status = JSON.parse(message.data);
    if (status.code === OUT_OF_RANGE) {   // compacted: start over with a snapshot
      source.close();
      setTimeout(connect, 200);
    } else {
      setLive("reconnecting", "resuming", status.message);
    }
  });
  source.onerror = () => {
    if (source !== state.source) return;
    if (source.readyState === EventSource.CLOSED) {  // refused (token, compaction): start over
      setLive("offline", "offline");
      setTimeout(() => checkSession().then(() => { if (state.session) connect(); }), 2000);
    } else {
      setLive("reconnecting", "reconnecting");
    }
  };
}

function onEvent(event) {
  if (event.revision) setRevision(event.revision);
  const agent = event.agent;
  switch (event.type) {
    case "SNAPSHOT":
      if (!state.snapshot) state.snapshot = new Map();
      state.snapshot.set(agent.agent_id, agent);
      return;
    case "SNAPSHOT_END":
      finishSnapshot(state.snapshot || new Map());
      return;
    case "PROGRESS":
      return;
    case "NOTIFICATION":
      note(event.notification.agent_id, "NOTIFICATION", event.notification.kind);
      scheduleRender();
      return;
  }
  if (!agent) return;
  const id = agent.agent_id;
  if (CHANGED.has(event.type)) {
    const known = state.agents.has(id);
    state.agents.set(id, agent);
    flash(id, known ? "changed" : "added");
    sample(agent);
    note(id, event.type, event.type === "STATUS_CHANGED" ? agent.status : "");
  } else if (REMOVED.has(event.type)) {
    flash(id, "removed");
    note(id, event.type, event.reason);
    setTimeout(() => {
      const f = state.flash.get(id);
      if (f && f.cls === "removed") { state.agents.delete(id); state.flash.delete(id); scheduleRender(); }
    }, REMOVE_MS);
  }
  scheduleRender();
  scheduleStats();
}

function finishSnapshot(fresh) {
  const first = state.agents.size === 0;
  for (const id of state.agents.keys()) if (!fresh.has(id)) flash(id, "removed");
  for (const [id, agent] of fresh) {
    if (!first && !state.agents.has(id)) flash(id, "added");
    sample(agent);
  }
  const leaving = [...state.agents.keys()].filter((id) => !fresh.has(id));
  state.agents = new Map([...fresh, ...leaving.map((id) => [id, state.agents.get(id)])]);
  setTimeout(() => { leaving.forEach((id) => { if (!fresh.has(id)) state.agents.delete(id); }); scheduleRender(); }, REMOVE_MS);
  state.snapshot = null;
  scheduleRender();
}

function flash(id, cls) {
  state.flash.set(id, { cls, until: Date.now() + (cls === "removed" ? REMOVE_MS : FLASH_MS) });
}

function note(id, what, why) {
  const item = { t: Date.now(), id, what, why: why || "" };
  const list = state.events.get(id) || [];
  list.unshift(item);
  state.events.set(id, list.slice(0, 30));
  state.activity.unshift(item);
  state.activity = state.activity.slice(0, 6);
}

function sample(agent) {
  const t = Number(agent.last_heartbeat_unix_ms) || Date.now();
  const list = state.history.get(agent.agent_id) || [];
  if (!list.length || list[list.length - 1].t !== t) {
    list.push({ t, sr: agent.telemetry.success_rate || 0, dur: agent.telemetry.avg_duration_ms || 0 });
  }
  const horizon = Date.now() - HISTORY_MS;
  state.history.set(agent.agent_id, list.filter((s) => s.t >= horizon));
}

// -- periodic reads: counts, heartbeat ages and telemetry ----------------------------------
let statsTimer = 0;
function scheduleStats() {
  if (!statsTimer) statsTimer = setTimeout(() => { statsTimer = 0; loadStats(); }, 400);
}

async function loadStats() {
  try {
    state.stats = (await api("GET", "/v1/stats")).namespaces || [];
  } catch (error) {
    if (error.status === 401) return askToken(state.token ? "That token is not valid." : "");
  }
  renderOverview();
}

async function sweep() {
  // Heartbeats renew leases without an event: read the namespace's records again.
  let token = "";
  try {
    do {
      const page = await api("GET", `/v1/agents?namespace=${encodeURIComponent(state.ns)}` +
        `&page_size=1000&page_token=${encodeURIComponent(token)}`);
      for (const agent of page.agents) {
        if (state.agents.has(agent.agent_id) && !state.flash.has(agent.agent_id)) {
          state.agents.set(agent.agent_id, agent);
          sample(agent);
        }
      }
      token = page.next_page_token;
    } while (token);
  } catch (error) { /* the watch reports trouble */ }
  scheduleRender();
}

async function refreshSelected() {
  if (!state.selected || !state.agents.has(state.selected)) return;
  try {
    const { agent } = await api("GET", "/v1/agents/" + state.selected);
    if (state.agents.has(agent.agent_id)) state.agents.set(agent.agent_id, agent);
    sample(agent);
    renderDetail();
  } catch (error) { /* gone: the watch removes it */ }
}

// -- session and token ---------------------------------------------------------------------
async function checkSession() {
  try {
    state.session = await api("GET", "/dashboard/session");
  } catch (error) {
    state.session = null;
    if (error.status === 401) askToken(state.token ? "That token is not valid." : "");
  }
  renderToken();
}

function isOperator() {
  const s = state.session;
  return !!s && s.scope === "operator" && (s.namespace === "*" || s.namespace === state.ns);
}

function askToken(message) {
  const dialog = $("token-dialog");
  $("token-error").textContent = message || "";
  $("token-input").value = "";
  if (!dialog.open) dialog.showModal();
}

function renderToken() {
  const s = state.session;
  const button = $("token-button");
  if (!s) button.innerHTML = "No token";
  else if (!s.auth) button.innerHTML = 'Auth off · <span class="role">operator</span>';
  else button.innerHTML = `${esc(s.name)} · <span class="role">${esc(s.scope)}</span>`;
  renderDetail();
}

// -- rendering -----------------------------------------------------------------------------
let renderQueued = false;
function scheduleRender() {
  if (!renderQueued) { renderQueued = true; requestAnimationFrame(render); }
}

function render() {
  renderQueued = false;
  const now = Date.now();
  for (const [id, f] of state.flash) if (f.until < now && f.cls !== "removed") state.flash.delete(id);
  state.view = filtered();
  renderRows();
  renderOverview();
  renderDetail();
}

function filters() {
  const caps = $("f-capability").value.toLowerCase().split(/[\s,]+/).filter(Boolean);
  const text = $("f-text").value.trim().toLowerCase();
  return { caps, text, type: $("f-type").value, status: $("f-status").value, stale: Number($("f-stale").value) };
}

function matches(agent, f, now) {
  if (f.type && agent.agent_type !== f.type) return false;
  if (f.status && agent.status !== f.status) return false;
  const caps = agent.capabilities.map((c) => c.toLowerCase());
  if (!f.caps.every((c) => caps.includes(c))) return false;
  if (f.stale && now - Number(agent.last_heartbeat_unix_ms) < f.stale * 1000) return false;
  if (f.text) {
    const [key, value] = f.text.split("=");
    if (value !== undefined) {
      const meta = Object.entries(agent.metadata).find(([k]) => k.toLowerCase() === key.trim());
      return !!meta && meta[1].toLowerCase().includes(value.trim());
    }
    const hay = [agent.agent_id, agent.endpoint, agent.cluster, agent.version,
      ...Object.entries(agent.metadata).map(([k, v]) => k + "=" + v)].join(" ").toLowerCase();
    return hay.includes(f.text);
  }
  return true;
}

const SORT_KEYS = {
  agent_id: (a) => a.agent_id,
  agent_type: (a) => a.agent_type,
  status: (a) => STATUS_ORDER[a.status] ?? 9,
  capabilities: (a) => a.capabilities.join(","),
  endpoint: (a) => a.endpoint,
  heartbeat: (a) => -Number(a.last_heartbeat_unix_ms),
  success_rate: (a) => a.telemetry.success_rate || 0,
  avg_duration_ms: (a) => a.telemetry.avg_duration_ms || 0,
};

function filtered() {
  const f = filters();
  const now = Date.now();
  const key = SORT_KEYS[state.sort.key];
  const dir = state.sort.dir;
  const list = [...state.agents.values()].filter((a) => state.flash.get(a.agent_id)?.cls === "removed" || matches(a, f, now));
  list.sort((a, b) => {
    const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : a.agent_id < b.agent_id ? -1 : 1) * dir;
  });
  return list.map((a) => a.agent_id);
}

function renderRows() {
  const body = $("body");
  const rows = $("rows");
  const total = state.view.length;
  rows.style.height = total * ROW + "px";
  const first = Math.max(0, Math.floor(body.scrollTop / ROW) - 6);
  const last = Math.min(total, Math.ceil((body.scrollTop + body.clientHeight) / ROW) + 6);
  const f = filters();
  const now = Date.now();
  const html = [];
  for (let i = first; i < last; i++) {
    const id = state.view[i];
    html.push(rowHtml(state.agents.get(id), i, f, now));
  }
  rows.innerHTML = html.join("");
  const known = state.agents.size;
  $("shown").textContent = total === known ? `${known} agents` : `${total} of ${known} agents`;
  const empty = $("empty");
  empty.hidden = total > 0;
  empty.textContent = known ? "No agent matches these filters" :
    state.snapshot === null && state.source ? `No agents in ${state.ns}` : "Loading…";
}

function rowHtml(a, index, f, now) {
  const flashing = state.flash.get(a.agent_id);
  const cls = ["row", flashing ? flashing.cls : "", a.agent_id === state.selected ? "selected" : ""].join(" ");
  const [ns, name] = splitId(a.agent_id);
  const age = now - Number(a.last_heartbeat_unix_ms);
  const lease = Number(a.expires_at_unix_ms) - Number(a.last_heartbeat_unix_ms);
  const stale = lease > 0 && age > lease / 2;
  const caps = a.capabilities.map((c) => `<span class="chip${f.caps.includes(c.toLowerCase()) ? " hit" : ""}">${esc(c)}</span>`).join("");
  return `<div class="${cls}" style="top:${index * ROW}px" data-agent-id="${esc(a.agent_id)}" data-status="${a.status}">` +
    `<div class="cell id" title="${esc(a.agent_id)}"><span class="nsp">${esc(ns)}/</span>${esc(name)}</div>` +
    `<div class="cell type">${esc(a.agent_type)}</div>` +
    `<div class="cell"><span class="status ${a.status}">${title(a.status)}</span></div>` +
    `<div class="cell" title="${esc(a.capabilities.join(", "))}">${caps || '<span class="dim">—</span>'}</div>` +
    `<div class="cell endpoint c-endpoint" title="${esc(a.endpoint)}">${esc(a.endpoint) || '<span class="dim">—</span>'}</div>` +
    `<div class="cell num age${stale ? " stale" : ""}">${ago(age)}</div>` +
    `<div class="cell num">${rate(a.telemetry)}</div>` +
    `<div class="cell num">${duration(a.telemetry)}</div></div>`;
}

function renderOverview() {
  $("ns-name").textContent = state.ns;
  const mine = state.stats.find((s) => s.namespace === state.ns);
  const live = [...state.agents.values()].filter((a) => state.flash.get(a.agent_id)?.cls !== "removed");
  $("count-total").textContent = live.length;
  const all = state.stats.reduce((n, s) => n + Number(s.agents), 0);
  $("count-all").textContent = state.stats.length ?
    `${all} in ${state.stats.length} namespace${state.stats.length === 1 ? "" : "s"}` : "";
  const count = (field, value) => live.filter((a) => a[field] === value).length;
  $("by-status").innerHTML = bars(["HEALTHY", "DEGRADED", "UNHEALTHY"].map((s) => [s, count("status", s)]), live.length);
  $("by-type").innerHTML = bars(["WORKER", "SCOUT", "GUARD"].map((t) => [t, count("agent_type", t)]), live.length);
  const names = state.stats.map((s) => s.namespace);
  if (!names.includes(state.ns)) names.push(state.ns);
  names.sort();
  $("namespaces").innerHTML = names.map((n) => {
    const s = state.stats.find((x) => x.namespace === n);
    return `<li class="${n === state.ns ? "current" : ""}" data-ns="${esc(n)}"><span>${esc(n)}</span><span class="n">${s ? s.agents : 0}</span></li>`;
  }).join("");
  const select = $("namespace");
  const options = names.map((n) => `<option${n === state.ns ? " selected" : ""}>${esc(n)}</option>`).join("");
  if (select.dataset.options !== options) { select.innerHTML = options; select.dataset.options = options; }
  $("activity").innerHTML = state.activity.map((e) =>
    `<li><time>${clock(e.t)}</time><span class="what ${e.what}">${label(e.what)}</span><span class="who">${esc(e.id)}</span></li>`).join("") ||
    '<li class="dim">Waiting for changes…</li>';
  void mine;
}

function bars(items, total) {
  return items.map(([name, n]) => `<div class="bar ${name}"><span>${title(name)}</span>` +
    `<span class="track"><span class="fill" style="width:${total ? (100 * n / total).toFixed(1) : 0}%"></span></span>` +
    `<span class="n">${n}</span></div>`).join("");
}

function renderDetail() {
  const panel = $("detail");
  const a = state.agents.get(state.selected);
  document.body.classList.toggle("with-detail", !!a);
  if (!a) { panel.hidden = true; return; }
  panel.hidden = false;
  $("d-id").textContent = a.agent_id;
  $("d-sub").innerHTML = `<span class="status ${a.status}">${title(a.status)}</span><span class="type">${esc(a.agent_type)}</span>`;
  const now = Date.now();
  const facts = [
    ["Endpoint", a.endpoint || "—", true],
    ["Capabilities", a.capabilities.join(", ") || "—"],
    ["Cluster", a.cluster || "—"], ["Version", a.version || "—"],
    ["Last heartbeat", `${ago(now - Number(a.last_heartbeat_unix_ms))} ago`],
    ["Lease ends", `in ${ago(Number(a.expires_at_unix_ms) - now)}`],
    ["Registered", new Date(Number(a.registered_at_unix_ms)).toLocaleString()],
    ["Executions", `${a.telemetry.total_executions} (${a.telemetry.failed_executions} failed)`],
  ];
  $("d-facts").innerHTML = facts.map(([k, v, mono]) => `<dt>${k}</dt><dd${mono ? ' class="mono"' : ""}>${esc(v)}</dd>`).join("");
  const meta = Object.entries(a.metadata).sort();
  $("d-meta").innerHTML = meta.length ? meta.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("") :
    '<tr><td class="dim" colspan="2">none</td></tr>';
  $("d-chart").innerHTML = chart(state.history.get(a.agent_id) || [], now);
  $("d-actions").hidden = !isOperator();
  const events = state.events.get(a.agent_id) || [];
  $("d-events").innerHTML = events.map((e) => `<li><time>${clock(e.t)}</time><span class="what ${e.what}">${label(e.what)}</span><span class="why">${esc(e.why)}</span></li>`).join("") ||
    '<li class="dim">None since this page opened</li>';
}

function chart(samples, now) {
  const w = 380, h = 120, left = 30, right = 46, top = 8, bottom = 18;
  // the time axis spans what the page saw, up to HISTORY_MS
  const span = Math.min(HISTORY_MS, Math.max(1000, samples.length ? now - samples[0].t + 500 : HISTORY_MS));
  const x = (t) => left + (w - left - right) * (1 - (now - t) / span);
  const maxDur = Math.max(1, ...samples.map((s) => s.dur)) * 1.15;
  const ySr = (v) => top + (h - top - bottom) * (1 - v);
  const yDur = (v) => top + (h - top - bottom) * (1 - v / maxDur);
  const line = (f) => samples.map((s, i) => `${i ? "L" : "M"}${x(s.t).toFixed(1)},${f(s).toFixed(1)}`).join("");
  const pts = samples.length === 1 ? `<circle cx="${x(samples[0].t)}" cy="${ySr(samples[0].sr)}" r="3" fill="#12b76a"/>` : "";
  return `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="telemetry">` +
    [0, .5, 1].map((v) => `<line class="axis" x1="${left}" x2="${w - right}" y1="${ySr(v)}" y2="${ySr(v)}"/><text x="2" y="${ySr(v) + 3}">${v * 100}%</text>`).join("") +
    `<text x="${w - right + 4}" y="${top + 6}">${Math.round(maxDur)}ms</text>` +
    `<text x="${left}" y="${h - 3}">−${ago(span)}</text><text x="${w - right - 22}" y="${h - 3}">now</text>` +
    (samples.length > 1 ? `<path class="sr" d="${line((s) => ySr(s.sr))}"/><path class="dur" d="${line((s) => yDur(s.dur))}"/>` : pts) +
    `</svg><div class="legend"><span><i style="background:#12b76a"></i>success rate</span>` +
    `<span><i style="background:#7a5af8"></i>avg duration</span><span>${samples.length} sample${samples.length === 1 ? "" : "s"}</span></div>`;
}

// -- formatting ----------------------------------------------------------------------------
function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function splitId(id) { const i = id.indexOf("/"); return [id.slice(0, i), id.slice(i + 1)]; }
function title(word) { return word ? word[0] + word.slice(1).toLowerCase() : ""; }
function label(what) { return what.replace("_", " ").toLowerCase(); }
function ago(ms) {
  if (!Number.isFinite(ms)) return "—";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
}
function clock(t) { return new Date(t).toTimeString().slice(0, 8); }
function rate(t) {
  if (!Number(t.total_executions) && !t.success_rate) return '<span class="dim">—</span>';
  const v = t.success_rate;
  const band = v >= 0.9 ? "" : v >= 0.5 ? " mid" : " low";
  return `<span class="rate${band}"><span class="meter"><i style="width:${(v * 100).toFixed(0)}%"></i></span>${(v * 100).toFixed(1)}%</span>`;
}
function duration(t) {
  const d = t.avg_duration_ms;
  if (!d) return '<span class="dim">—</span>';
  return d >= 1000 ? (d / 1000).toFixed(2) + " s" : d.toFixed(d < 10 ? 1 : 0) + " ms";
}
function setLive(cls, text, why) {
  const pill = $("live");
  pill.className = "pill " + cls;
  pill.textContent = text;
  pill.title = why || "Watch stream: " + text;
}
function setRevision(revision) {
  state.revision = revision;
  $("revision").textContent = "rev " + revision;
}

// -- interaction ---------------------------------------------------------------------------
function switchNamespace(ns) {
  if (ns === state.ns) return;
  state.ns = ns;
  sessionStorage.setItem("sr.namespace", ns);
  state.agents = new Map();
  state.flash.clear();
  state.activity = [];
  state.selected = "";
  $("body").scrollTop = 0;
  connect();
  loadStats();
  scheduleRender();
}

function wire() {
  $("body").addEventListener("scroll", scheduleRender, { passive: true });
  window.addEventListener("resize", scheduleRender);
  for (const id of ["f-capability", "f-text", "f-type", "f-status", "f-stale"]) {
    $(id).addEventListener("input", () => { $("body").scrollTop = 0; scheduleRender(); });
  }
  $("head").addEventListener("click", (e) => {
    const key = e.target.dataset && e.target.dataset.sort;
    if (!key) return;
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
    for (const b of $("head").querySelectorAll("button")) {
      b.classList.toggle("sorted", b.dataset.sort === key);
      b.classList.toggle("desc", b.dataset.sort === key && state.sort.dir < 0);
    }
    scheduleRender();
  });
  $("rows").addEventListener("click", (e) => {
    const row = e.target.closest(".row");
    if (!row) return;
    state.selected = row.dataset.agentId === state.selected ? "" : row.dataset.agentId;
    $("action-result").textContent = "";
    scheduleRender();
    refreshSelected();
  });
  $("d-close").addEventListener("click", () => { state.selected = ""; scheduleRender(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.selected && !$("token-dialog").open) { state.selected = ""; scheduleRender(); }
  });
  $("namespace").addEventListener("change", (e) => switchNamespace(e.target.value));
  $("namespaces").addEventListener("click", (e) => {
    const li = e.target.closest("li[data-ns]");
    if (li) switchNamespace(li.dataset.ns);
  });
  $("token-button").addEventListener("click", () => askToken(""));
  $("token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.token = $("token-input").value.trim();
    sessionStorage.setItem("sr.token", state.token);
    await checkSession();
    if (state.session) { $("token-dialog").close(); connect(); loadStats(); }
  });
  $("token-clear").addEventListener("click", () => {
    state.token = "";
    sessionStorage.removeItem("sr.token");
    $("token-dialog").close();
    checkSession().then(() => { if (state.session) connect(); });
  });
  $("evict-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = state.selected;
    act(() => api("POST", "/v1/evict", { agent_ids: [id], reason: $("e-reason").value }),
      (r) => r.evicted_ids.length ? `Evicted ${id}` : `${id} was already gone`);
  });
  $("notify-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = state.selected;
    act(() => api("POST", "/v1/notify", { agent_id: id, kind: $("n-kind").value, payload: $("n-payload").value }),
      (r) => `Sent ${r.notification_id}`);
  });
}

async function act(call, describe) {
  const out = $("action-result");
  try {
    out.className = "action-result";
    out.textContent = describe(await call());
  } catch (error) {
    out.className = "action-result error";
    out.textContent = `${error.status}: ${error.message}`;
  }
}

async function main() {
  wire();
  await checkSession();
  if (state.session) connect();  // else the token dialog is open; submitting it connects
  else setLive("offline", "needs a token");
  loadStats();
  setInterval(loadStats, STATS_MS);
  setInterval(sweep, SWEEP_MS);
  setInterval(refreshSelected, DETAIL_MS);
  setInterval(scheduleRender, 1000);  // ages tick
  scheduleRender();
}

main();
