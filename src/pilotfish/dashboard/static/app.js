// The dashboard: hash routes, each page a function that fills <main>.
// Reads use the REST API without a token (open on loopback); writes send
// the token the page asks for, kept in sessionStorage only.
"use strict";
const main = document.getElementById("main");
const API = "/dashboard/api";
let source = null; // the graph's EventSource, closed when leaving the page

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}
async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}
const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(2) + "%");
const ms = (x) => (x === null || x === undefined ? "-" : Math.round(x) + "ms");
const rps = (x) => (x === null || x === undefined ? "-" : x.toFixed(2) + "rps");

// -- Graph --------------------------------------------------------------------------
function graphPage() {
  main.replaceChildren(
    el("div", { class: "panel legend" },
      el("span", { class: "healthy" }, "\u25cf healthy"), el("span", { class: "degraded" }, "\u25cf 5xx > 0%"),
      el("span", { class: "failure" }, "\u25cf 5xx \u2265 10%"), el("span", { class: "idle" }, "\u25cf idle"),
      el("span", {}, "\u25b2 service \u25cf workload \u25a0 gateway [mTLS] mutual TLS"),
      el("span", { id: "graph-time" }, ""),
      labelMenu),
    el("div", { class: "panel", id: "graph" }, "waiting for metrics\u2026"));
  listen(labelMenu.value);
  labelMenu.onchange = () => listen(labelMenu.value);
}

const labelMenu = el("select", { id: "edge-label" },
  el("option", { value: "rps" }, "request rate"), el("option", { value: "errors" }, "error share"),
  el("option", { value: "p99" }, "p99 latency"));

function listen(label) {
  if (source) source.close();
  source = new EventSource(`${API}/graph/stream?window=1m&label=${label}`);
  source.onmessage = (event) => {
    const graph = JSON.parse(event.data);
    const holder = document.getElementById("graph");
    if (!holder) return;
    holder.innerHTML = graph.edges.length ? graph.svg : "no traffic in the last minute";
    holder.dataset.edges = graph.edges.length;
    document.getElementById("graph-time").textContent =
      "updated " + new Date(graph.timestamp * 1000).toLocaleTimeString();
  };
}

// -- A workload or service ----------------------------------------------------------
async function detailPage(type, namespace, name) {
  const query = `namespace=${encodeURIComponent(namespace)}&${type}=${encodeURIComponent(name)}`;
  const [timeline, graph, instances] = await Promise.all([
    getJson(`${API}/timeline?${query}&window=15m`),
    getJson(`${API}/graph?window=15m`),
    getJson("/api/v1/registry/instances"),
  ]);
  const id = type === "workload" ? `workload:${namespace}/${name}` : null;
  const mine = (nodeId) => (id ? nodeId === id : nodeId.startsWith(`service:${name}.${namespace}.`));
  const t = timeline.total;
  const golden = el("table", {},
    el("tr", {}, ...["RPS", "SUCCESS", "P50", "P90", "P99", "TCP"].map((h) => el("th", {}, h))),
    el("tr", {}, el("td", {}, rps(t.rps)), el("td", {}, pct(t.successRate)), el("td", {}, ms(t.p50)),
      el("td", {}, ms(t.p90)), el("td", {}, ms(t.p99)),
      el("td", {}, t.tcp ? `${t.tcp.open} open, ${Math.round(t.tcp.sentBytesPerSecond)}B/s` : "-")));
  const neighbours = el("table", {}, el("tr", {}, el("th", {}, "direction"), el("th", {}, "peer"),
    el("th", {}, "rps"), el("th", {}, "errors"), el("th", {}, "p99")));
  for (const e of graph.edges) {
    const dir = mine(e.target) ? "inbound from" : mine(e.source) ? "outbound to" : null;
    if (!dir) continue;
    neighbours.append(el("tr", {}, el("td", {}, dir), el("td", {}, dir[0] === "i" ? e.source : e.target),
      el("td", {}, rps(e.rps)), el("td", { class: e.health }, pct(e.errorRate)), el("td", {}, ms(e.p99))));
  }
  const inst = el("table", {}, el("tr", {}, el("th", {}, "instance"), el("th", {}, "address"), el("th", {}, "healthy")));
  for (const i of instances.items || []) {
    if (type === "workload" && (i.workload !== name || i.namespace !== namespace)) continue;
    if (type === "service") continue;
    inst.append(el("tr", {}, el("td", {}, i.name), el("td", {}, i.address),
      el("td", { class: i.healthy ? "good" : "bad" }, String(i.healthy))));
  }
  main.replaceChildren(
    el("h2", {}, `${type} ${namespace}/${name}`),
    el("div", { class: "panel" }, el("h3", {}, "Last 15 minutes"), golden, chart(timeline.points)),
    el("div", { class: "panel" }, el("h3", {}, "Neighbours"), neighbours),
    el("div", { class: "panel" }, el("h3", {}, "Instances"), inst),
    el("div", { class: "panel", id: "applies" }, el("h3", {}, "Config that applies"), "loading\u2026"),
    el("div", { class: "panel", id: "recent-traces" }, el("h3", {}, "Recent traces"), "loading\u2026"));
  // Beside the config below, not before it: traces are a second, independent read.
  const traces = document.getElementById("recent-traces");
  recentTraces(type, namespace, name)
    .then((found) => traces.replaceChildren(el("h3", {}, "Recent traces"), ...found))
    .catch((e) => traces.replaceChildren(el("h3", {}, "Recent traces"), el("p", { class: "bad" }, String(e.message || e))));
  const host = type === "service" ? name : name.replace(/-v\d+$|-primary$/, "");
  document.getElementById("applies").replaceChildren(el("h3", {}, "Config that applies"), ...(await appliedConfig(host, namespace)));
}

function chart(points) {
  const w = 600, h = 80;
  const max = Math.max(0.001, ...points.map((p) => p.rps));
  const t0 = points.length ? points[0].time : 0, t1 = points.length ? points[points.length - 1].time : 1;
  const xy = (p) => `${((p.time - t0) / Math.max(1, t1 - t0)) * w},${h - (p.rps / max) * h}`;
  const svg = `<svg class="chart" width="${w}" height="${h}"><polyline fill="none" stroke="#0066cc" stroke-width="2" points="${points.map(xy).join(" ")}"/></svg>`;
  const div = el("div", {}, `requests per second (max ${max.toFixed(2)})`);
  div.insertAdjacentHTML("beforeend", svg);
  return div;
}

async function appliedConfig(host, namespace) {
  const kinds = [["virtualservices", "hosts"], ["destinationrules", "host"]];
  const out = [];
  for (const [plural, field] of kinds) {
    const list = await getJson(`/apis/networking.istio.io/v1/namespaces/${namespace}/${plural}`);
    for (const obj of list.items || []) {
      const hosts = [].concat(obj.spec[field] || []);
      if (hosts.some((h) => h === host || h.startsWith(host + "."))) {
        out.push(el("h4", {}, `${obj.kind} ${obj.metadata.name}`), el("pre", {}, JSON.stringify(obj.spec, null, 2)));
      }
    }
  }
  return out.length ? out : ["no routes or destination rules name this host"];
}

// -- Releases -----------------------------------------------------------------------
const FIELD_MANAGER = "pilotfish-rollout"; // as `pilotfish rollout pause` applies
const weights = {}; // canary -> [[time, weight]] seen while the page is open

function token() {
  let t = sessionStorage.getItem("pilotfish-token");
  if (!t) {
    t = prompt("The control plane's token (DATA_DIR/token), kept for this browser session only:");
    if (t) sessionStorage.setItem("pilotfish-token", t.trim());
  }
  return sessionStorage.getItem("pilotfish-token");
}

// What `pilotfish rollout` sends: the fields its manager owned, with the request added.
function ownedConfig(live) {
  const meta = live.metadata || {}, spec = live.spec || {};
  const config = { apiVersion: live.apiVersion, kind: "Canary", metadata: { name: meta.name, namespace: meta.namespace } };
  const entry = (meta.managedFields || []).find((m) => m.manager === FIELD_MANAGER && m.operation === "Apply");
  const fields = (entry && entry.fieldsV1) || {};
  const owned = (fields["f:metadata"] || {})["f:annotations"] || {};
  const annotations = meta.annotations || {};
  const kept = {};
  for (const k of Object.keys(owned)) if (k.startsWith("f:") && k.slice(2) in annotations) kept[k.slice(2)] = annotations[k.slice(2)];
  if (Object.keys(kept).length) config.metadata.annotations = kept;
  if ("f:suspend" in (fields["f:spec"] || {}) && "suspend" in spec) config.spec = { suspend: spec.suspend };
  return config;
}

async function steer(canary, action) {
  const t = token();
  if (!t) return;
  const config = ownedConfig(canary);
  if (action === "pause" || action === "resume") config.spec = { suspend: action === "pause" };
  else {
    config.metadata.annotations = config.metadata.annotations || {};
    config.metadata.annotations["rollout.pilotfish.dev/" + action] = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  }
  const { namespace, name } = canary.metadata;
  const r = await fetch(`/apis/flagger.app/v1beta1/namespaces/${namespace}/canaries/${name}?fieldManager=${FIELD_MANAGER}&force=true`, {
    method: "PATCH", body: JSON.stringify(config),
    headers: { "Content-Type": "application/apply-patch+yaml", Authorization: "Bearer " + t },
  });
  const body = await r.json();
  if (r.status === 401) sessionStorage.removeItem("pilotfish-token");
  document.getElementById("status").textContent = r.ok ? `${name}: ${action} sent` : `${name}: ${body.message}`;
  releasesPage();
}

async function releasesPage() {
  const [list, events] = await Promise.all([
    getJson("/apis/flagger.app/v1beta1/canaries"),
    getJson("/api/v1/events").catch(() => ({ items: [] })),
  ]);
  const panels = [];
  for (const c of list.items || []) {
    const st = c.status || {}, key = `${c.metadata.namespace}/${c.metadata.name}`;
    const w = st.canaryWeight || 0;
    (weights[key] = weights[key] || []).push([Date.now(), w]);
    const last = st.lastAnalysis || {};
    const checks = el("table", {}, el("tr", {}, ...["", "check", "value", "threshold", ""].map((h) => el("th", {}, h))));
    for (const m of ((c.spec.analysis || {}).metrics || [])) {
      const r = (last.metrics || []).find((x) => x.name === m.name) || {};
      const range = m.thresholdRange || {};
      const low = r.min ?? range.min, high = r.max ?? range.max;
      const has = r.value !== undefined && r.value !== null;
      const ok = has && (low === undefined || low === null || r.value >= low) && (high === undefined || high === null || r.value <= high);
      checks.append(el("tr", { class: "check" },
        el("td", { class: !("name" in r) ? "idle" : ok ? "good" : "bad" }, !("name" in r) ? "" : ok ? "ok" : "FAIL"),
        el("td", {}, m.name), el("td", {}, has ? Number(r.value).toFixed(2) : "-"),
        el("td", {}, `${low != null ? "\u2265 " + low : ""} ${high != null ? "\u2264 " + high : ""}`),
        el("td", {}, r.message || "")));
    }
    const mine = (events.items || []).filter((e) => (e.involvedObject || {}).name === c.metadata.name && (e.involvedObject || {}).kind === "Canary")
      .sort((a, b) => String(a.lastTimestamp || "").localeCompare(String(b.lastTimestamp || ""))).slice(-8);
    const buttons = ["pause", "resume", "promote", "abort"].map((a) => {
      const b = el("button", { "data-action": a }, a);
      b.onclick = () => steer(c, a);
      return b;
    });
    panels.push(el("div", { class: "panel canary", "data-name": key },
      el("h3", {}, `Canary ${key}`),
      el("p", {}, "phase: ", el("strong", { class: "phase" }, st.phase || "Initializing"), c.spec.suspend ? " (paused)" : ""),
      el("p", {}, "canary weight: ", el("strong", { class: "weight" }, `${w}%`), " ",
        el("span", { class: "bar", style: `width:${2 * w}px` }), ` failed checks: ${st.failedChecks || 0}`),
      weightChart(weights[key]),
      el("h4", {}, "Analysis" + (last.time ? ` at ${last.time}` : "")), checks,
      el("h4", {}, "Events"), el("pre", {}, mine.map((e) => `${e.lastTimestamp || ""} ${e.reason}: ${e.message}`).join("\n") || "none"),
      el("div", {}, ...buttons)));
  }
  main.replaceChildren(...(panels.length ? panels : [el("p", {}, "no Canaries")]));
}

function weightChart(points) {
  const div = el("div", {});
  const w = 300, h = 50, t0 = points[0][0], t1 = Math.max(t0 + 1, points[points.length - 1][0]);
  const xy = ([t, v]) => `${((t - t0) / (t1 - t0)) * w},${h - (v / 100) * h}`;
  div.insertAdjacentHTML("beforeend", `<svg class="chart" width="${w}" height="${h}"><polyline fill="none" stroke="#ec7a08" stroke-width="2" points="${points.map(xy).join(" ")}"/></svg> weight over time`);
  return div;
}

// -- Traces -------------------------------------------------------------------------
// Jaeger's query API on the same port (/api/traces, /api/services); the waterfall
// is drawn on the server, as the graph is.
const duration = (us) => (us < 1000 ? `${us}\u03bcs` : us < 1e6 ? `${(us / 1000).toFixed(2)}ms` : `${(us / 1e6).toFixed(2)}s`);
const isError = (s) => (s.tags || []).some((t) => t.key === "error" && t.value === true);

function traceSummary(t) {
  const start = Math.min(...t.spans.map((s) => s.startTime));
  const end = Math.max(...t.spans.map((s) => s.startTime + s.duration));
  const root = t.spans.find((s) => !(s.references || []).some((r) => r.refType === "CHILD_OF")) || t.spans[0];
  return { start, took: end - start, root: `${t.processes[root.processID].serviceName}: ${root.operationName}`,
    errors: t.spans.filter(isError).length, services: new Set(t.spans.map((s) => t.processes[s.processID].serviceName)).size };
}

function traceTable(traces) {
  const table = el("table", { id: "trace-results" }, el("tr", {}, ...["trace", "spans", "services", "errors", "duration", "started"].map((h) => el("th", {}, h))));
  for (const t of traces) {
    const s = traceSummary(t);
    table.append(el("tr", { class: "trace-result", "data-trace-id": t.traceID },
      el("td", {}, el("a", { href: `#/trace/${t.traceID}` }, s.root)), el("td", {}, t.spans.length),
      el("td", {}, s.services), el("td", { class: s.errors ? "bad" : "good" }, s.errors),
      el("td", {}, duration(s.took)), el("td", {}, new Date(s.start / 1000).toLocaleTimeString())));
  }
  return traces.length ? table : el("p", {}, "no traces found");
}

async function tracesPage(params) {
  const services = (await getJson("/api/services")).data || [];
  const service = el("select", { name: "service" }, ...services.map((s) => el("option", { value: s }, s)));
  const operation = el("select", { name: "operation" }, el("option", { value: "" }, "all"));
  const field = (name, placeholder) => el("input", { name, placeholder, size: 8, value: params.get(name) || "" });
  const status = el("select", { name: "status" }, el("option", { value: "" }, "any"), el("option", { value: "error" }, "error"), el("option", { value: "ok" }, "ok"));
  const form = el("form", { class: "search" },
    el("label", {}, "service ", service), el("label", {}, "operation ", operation),
    el("label", {}, "min ", field("minDuration", "100ms")), el("label", {}, "max ", field("maxDuration", "2s")),
    el("label", {}, "status ", status), el("label", {}, "limit ", field("limit", "20")),
    el("button", { type: "submit", id: "find-traces" }, "Find Traces"));
  const loadOperations = async () => {
    const ops = service.value ? (await getJson(`/api/services/${encodeURIComponent(service.value)}/operations`)).data : [];
    operation.replaceChildren(el("option", { value: "" }, "all"), ...ops.map((o) => el("option", { value: o }, o)));
    operation.value = params.get("operation") || "";
  };
  service.value = params.get("service") || services[0] || "";
  status.value = params.get("status") || "";
  service.onchange = () => { params.delete("operation"); loadOperations(); };
  form.onsubmit = (event) => {
    event.preventDefault();
    const q = new URLSearchParams([...new FormData(form)].filter(([, v]) => v));
    location.hash = `#/traces?${q}`;
  };
  const results = el("div", { class: "panel", id: "results" }, services.length ? "" : "no spans received yet (sidecars and applications export OTLP to /v1/traces)");
  main.replaceChildren(el("div", { class: "panel" }, form), results);
  await loadOperations();
  if (params.get("service")) {
    const r = await fetch(`/api/traces?${params}`);
    const body = await r.json();
    results.replaceChildren(r.ok ? traceTable(body.data) : el("p", { class: "bad" }, body.errors[0].msg));
  }
}

async function tracePage(id) {
  const { trace, svg } = await getJson(`${API}/waterfall?traceID=${encodeURIComponent(id)}`);
  const s = traceSummary(trace);
  const holder = el("div", { class: "panel", id: "waterfall" });
  holder.innerHTML = svg;
  const attributes = el("div", { class: "panel" }, el("h3", {}, "Spans"));
  for (const span of trace.spans) {
    const process = trace.processes[span.processID];
    const rows = [...(span.tags || []), ...(process.tags || []).map((t) => ({ ...t, key: `process: ${t.key}` }))];
    attributes.append(el("details", { class: "span-attrs", "data-span-id": span.spanID },
      el("summary", { class: isError(span) ? "bad" : "" }, `${process.serviceName}: ${span.operationName} (${duration(span.duration)})`),
      el("table", {}, ...rows.map((t) => el("tr", {}, el("td", {}, t.key), el("td", {}, String(t.value)))),
        el("tr", {}, el("td", {}, "spanID"), el("td", {}, span.spanID)))));
  }
  holder.onclick = (event) => {
    const g = event.target.closest("g.span");
    const details = g && attributes.querySelector(`details[data-span-id="${g.dataset.spanId}"]`);
    if (details) { details.open = true; details.scrollIntoView(); }
  };
  main.replaceChildren(
    el("h2", {}, `Trace ${trace.traceID}`),
    el("p", {}, `${s.root}: ${trace.spans.length} spans, ${s.services} services, ${s.errors} errors, ${duration(s.took)}`),
    holder, attributes);
}

async function recentTraces(type, namespace, name) {
  // Istio names a sidecar's spans CANONICAL_SERVICE.NAMESPACE; an application its own way.
  const canonical = name.replace(/-v\d+$|-primary$/, "");
  const known = (await getJson("/api/services")).data || [];
  const service = [`${canonical}.${namespace}`, name, canonical].find((s) => known.includes(s));
  if (!service) return ["no traces"];
  const body = await getJson(`/api/traces?service=${encodeURIComponent(service)}&limit=10`);
  return [traceTable(body.data)];
}

// -- Config -------------------------------------------------------------------------
async function configPage() {
  const { items } = await getJson(`${API}/config`);
  const table = el("table", {}, el("tr", {}, ...["kind", "namespace", "name", "messages"].map((h) => el("th", {}, h))));
  for (const row of items) {
    table.append(el("tr", { class: "config" }, el("td", {}, row.kind), el("td", {}, row.namespace), el("td", {}, row.name),
      el("td", { class: row.messages.length ? "degraded" : "good" }, row.messages.join("; ") || "ok")));
  }
  main.replaceChildren(el("div", { class: "panel" }, table));
}

// -- routing ------------------------------------------------------------------------
async function route() {
  if (source) { source.close(); source = null; }
  const [path, query] = (location.hash || "#/graph").slice(2).split("?");
  const parts = path.split("/");
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.id === "nav-" + parts[0].replace(/^trace$/, "traces")));
  try {
    if (parts[0] === "releases") await releasesPage();
    else if (parts[0] === "config") await configPage();
    else if (parts[0] === "traces") await tracesPage(new URLSearchParams(query || ""));
    else if (parts[0] === "trace") await tracePage(parts[1]);
    else if (parts[0] === "workload" || parts[0] === "service") await detailPage(parts[0], parts[1], parts[2]);
    else graphPage();
  } catch (e) {
    main.replaceChildren(el("p", { class: "bad" }, String(e.message || e)));
  }
}
window.addEventListener("hashchange", route);
setInterval(() => { if (location.hash.startsWith("#/releases")) releasesPage(); }, 3000);
route();
