// The status page: polls /api/status once a second and redraws the tables.
// Text goes in with textContent only, never as HTML: file names come from whoever drops files.
"use strict";

const POLL_MS = 1000;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    tr.appendChild(cell instanceof Node ? wrapCell(cell) : el("td", cell));
  }
  return tr;
}

function wrapCell(node) {
  if (node.tagName === "TD") return node;
  const td = document.createElement("td");
  td.appendChild(node);
  return td;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  if (m) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${s} s`;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit++; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function money(value) {
  return value ? `$${value.toFixed(value < 1 ? 4 : 2)}` : "–";
}

function fill(sectionId, items, build) {
  const section = document.getElementById(sectionId);
  const body = section.querySelector("tbody");
  body.replaceChildren(...items.map(build));
  section.querySelector(".empty").hidden = items.length > 0;
  section.querySelector("table").hidden = items.length === 0;
  section.dataset.count = String(items.length);
}

function bar(percent) {
  const td = el("td", null, "bar-cell");
  const outer = el("div", null, "bar");
  outer.setAttribute("role", "progressbar");
  outer.setAttribute("aria-valuemin", "0");
  outer.setAttribute("aria-valuemax", "100");
  outer.setAttribute("aria-valuenow", String(percent));
  const inner = el("div", null, "fill");
  inner.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  outer.appendChild(inner);
  td.appendChild(outer);
  td.appendChild(el("span", `${percent.toFixed(1)} %`, "percent"));
  return td;
}

function runningRow(job) {
  let state = job.state;
  if (job.waiting_reason) state += ` (${job.waiting_reason})`;
  const pieces = job.pieces || {};
  let pieceText = `${pieces.done ?? 0} of ${pieces.total ?? "?"}`;
  if (pieces.in_flight) pieceText += `, ${pieces.in_flight} in flight`;
  if (pieces.failed) pieceText += `, ${pieces.failed} failed`;
  const cost = job.cost || {};
  let costText = money(cost.spent);
  if (cost.estimated) costText += ` of ~${money(cost.estimated)}`;
  const stateCell = el("td", state, `state state-${job.state}`);
  if (job.last_error) stateCell.title = job.last_error;
  return row([el("td", job.source, "name"), stateCell, bar(job.percent || 0), pieceText,
              duration(job.eta_seconds), costText]);
}

function inboxRow(file) {
  const state = file.state === "settling" ? "arriving (still changing)" : "queued for a free worker";
  return row([el("td", file.name, "name"), size(file.size), el("td", state, `state state-${file.state}`),
              duration(file.waiting_seconds)]);
}

function problemRow(entry) {
  const what = el("td");
  what.appendChild(el("span", entry.kind === "rejected" ? "rejected: " : "failed: ", `state state-${entry.kind}`));
  what.appendChild(document.createTextNode(entry.reason || entry.error || "unknown"));
  return row([el("td", entry.source, "name"), what, entry.what_to_do || "–", entry.failed_at || "–"]);
}

function doneRow(job) {
  const links = el("td", null, "links");
  for (const name of job.outputs || []) {
    const a = el("a", name.slice(name.lastIndexOf(".")));
    a.href = "/outbox/" + encodeURIComponent(name);
    a.title = name;
    links.appendChild(a);
    links.appendChild(document.createTextNode(" "));
  }
  const audio = job.audio_seconds ? duration(job.audio_seconds.total) : "–";
  return row([el("td", job.source, "name"), job.finished_at || "–", audio, money((job.cost || {}).spent), links]);
}

function render(data) {
  const d = data.daemon || {};
  const inbox = data.inbox || { count: 0, files: [] };
  document.getElementById("summary").textContent =
    `${data.root} · ${d.running ? "running" : "stopped"}` +
    (data.engine ? ` · ${data.engine.name} ${data.engine.model}` : "") +
    ` · ${data.jobs.length} being transcribed · ${inbox.count} in the inbox`;
  const health = document.getElementById("health");
  const h = data.health || { status: "unknown", reasons: [] };
  health.textContent = h.status === "ok" ? "healthy" : `not healthy: ${h.reasons.join("; ")}`;
  health.className = `health health-${h.status}`;
  fill("running", data.jobs, runningRow);
  fill("inbox", inbox.files, inboxRow);
  const problems = [
    ...data.failed.map((e) => ({ ...e, kind: "failed" })),
    ...data.rejected.map((e) => ({ ...e, kind: "rejected" })),
  ].sort((a, b) => String(b.failed_at).localeCompare(String(a.failed_at)));
  fill("problems", problems, problemRow);
  fill("done", data.done, doneRow);
  document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.loaded = "true";
}

async function poll() {
  try {
    const answer = await fetch("/api/status", { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    render(await answer.json());
  } catch (error) {
    const health = document.getElementById("health");
    health.textContent = `the daemon does not answer (${error.message}); retrying`;
    health.className = "health health-unreachable";
  }
  setTimeout(poll, POLL_MS);
}

poll();
