// The dashboard's page: one EventSource, and the DOM built with
// createElement and textContent only. Everything shown comes from the bus
// and the runs' output, which anyone who can run a task controls: it is
// never parsed as HTML.
"use strict";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const canCancel = document.querySelector('meta[name="can-cancel"]').content === "1";
// What a card keeps of a run's output in the page (the server keeps as much).
const MAX_CARD_CHARACTERS = 64 * 1024;

const cards = new Map(); // run_id -> {root, output, chars, meta, button, badge}
let clockSkew = 0; // local seconds minus the server's, at the last summary

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function usd(amount) {
  if (typeof amount !== "number") return "–";
  const fixed = amount.toFixed(6).replace(/0+$/, "").replace(/\.$/, "");
  return "$" + (fixed || "0");
}

function duration(seconds) {
  if (typeof seconds !== "number") return "–";
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + "s";
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return minutes + "m " + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
  return Math.floor(minutes / 60) + "h " + String(minutes % 60).padStart(2, "0") + "m";
}

function ago(seconds) {
  if (seconds < 1.5) return "just now";
  return duration(seconds) + " ago";
}

function serverNow() {
  return Date.now() / 1000 - clockSkew;
}

function epoch(iso) {
  const value = Date.parse(iso);
  return Number.isNaN(value) ? null : value / 1000;
}

// --- the header ---------------------------------------------------------------

function renderTotals(totals) {
  document.getElementById("count-nodes").textContent = totals.nodes_up;
  document.getElementById("count-busy").textContent = totals.nodes_busy;
  const lost = document.getElementById("count-lost");
  lost.textContent = totals.nodes_lost;
  lost.classList.toggle("alert", totals.nodes_lost > 0);
  document.getElementById("count-runs").textContent = totals.runs_in_progress;
  document.getElementById("count-spend").textContent = usd(totals.recent_cost_usd);
  document.getElementById("count-fleet-spend").textContent = usd(totals.fleet_cost_usd);
}

function setConnection(state, text) {
  const badge = document.getElementById("connection");
  badge.className = "connection " + state;
  badge.textContent = text;
}

// --- nodes --------------------------------------------------------------------

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(
    ...nodes.map((node) => {
      const row = el("tr");
      row.dataset.nodeId = node.node_id;
      const name = el("td", "ident");
      name.append(el("span", "mono", node.node_id));
      if (node.node_name && node.node_name !== node.node_id) {
        name.append(el("span", "sub", node.node_name));
      }
      const status = el("td");
      status.append(el("span", "pill status-" + node.status, node.status));
      const capacity = node.capacity === null || node.capacity === undefined ? "?" : node.capacity;
      const running = el("td", "mono", node.running.length + " / " + capacity);
      running.title = node.running.join(", ");
      const heartbeat = el("td", "age");
      heartbeat.dataset.age = node.last_heartbeat_age_seconds;
      heartbeat.dataset.at = serverNow();
      heartbeat.textContent = ago(node.last_heartbeat_age_seconds);
      row.append(
        name,
        status,
        running,
        heartbeat,
        el("td", "num", node.tasks_completed),
        el("td", "num", node.tasks_failed),
        el("td", "num", usd(node.total_cost_usd)),
      );
      return row;
    }),
  );
  document.getElementById("nodes-empty").hidden = nodes.length > 0;
}

// --- runs in progress ---------------------------------------------------------

function newCard(run) {
  const root = el("article", "card");
  root.dataset.runId = run.run_id;
  const head = el("div", "card-head");
  const title = el("div", "card-title");
  title.append(el("span", "mono run-id", run.run_id));
  const badge = el("span", "pill status-cancelling", "cancelling");
  badge.hidden = true;
  title.append(badge);
  const meta = el("div", "card-meta");
  const button = el("button", "cancel", "Cancel");
  button.type = "button";
  if (!canCancel) {
    button.disabled = true;
    button.title = "Start the dashboard with --log-bucket to cancel runs";
  }
  button.addEventListener("click", () => cancelRun(run.run_id, button));
  head.append(title, button);
  const dropped = el("div", "dropped");
  dropped.hidden = true;
  const output = el("pre", "output");
  output.setAttribute("tabindex", "0");
  root.append(head, meta, dropped, output);
  return { root, output, chars: 0, meta, button, badge, dropped };
}

function updateCard(card, run) {
  const parts = [];
  if (run.task) parts.push(["task", run.task]);
  parts.push(["node", run.node_id]);
  if (run.attempt) parts.push(["attempt", run.attempt]);
  card.meta.replaceChildren(
    ...parts.map(([label, value]) => {
      const item = el("span", "meta-item");
      item.append(el("span", "meta-label", label), el("span", "mono", value));
      return item;
    }),
  );
  const since = el("span", "meta-item elapsed");
  since.dataset.since = epoch(run.started_at) ?? "";
  card.meta.append(since);
  card.badge.hidden = !run.cancelling;
  if (run.cancelling) {
    card.button.disabled = true;
    card.button.textContent = "Cancelling…";
  }
  card.dropped.hidden = !run.output_dropped_bytes;
  card.dropped.textContent =
    "… " + Math.round(run.output_dropped_bytes / 1024) + " KiB of earlier output not kept";
}

function appendOutput(card, pieces) {
  const output = card.output;
  const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 24;
  for (const [stream, text] of pieces) {
    const span = el("span", stream === "stderr" ? "stderr" : "stdout", text);
    output.append(span);
    card.chars += text.length;
  }
  while (card.chars > MAX_CARD_CHARACTERS && output.firstChild) {
    card.chars -= output.firstChild.textContent.length;
    output.firstChild.remove();
  }
  if (atBottom) output.scrollTop = output.scrollHeight;
}

function renderRuns(runs, withOutput) {
  const container = document.getElementById("runs");
  const present = new Set(runs.map((run) => run.run_id));
  for (const [runId, card] of cards) {
    if (!present.has(runId)) {
      card.root.remove();
      cards.delete(runId);
    }
  }
  for (const run of runs) {
    let card = cards.get(run.run_id);
    if (!card) {
      card = newCard(run);
      cards.set(run.run_id, card);
    }
    container.append(card.root); // keeps the server's order (oldest first)
    updateCard(card, run);
    if (withOutput) {
      card.output.replaceChildren();
      card.chars = 0;
      appendOutput(card, run.output || []);
    }
  }
  document.getElementById("runs-empty").hidden = runs.length > 0;
}

async function cancelRun(runId, button) {
  if (!window.confirm("Cancel run " + runId + "?\nIt stops within 10 s on whichever node has it.")) {
    return;
  }
  button.disabled = true;
  button.textContent = "Cancelling…";
  try {
    const response = await fetch("api/runs/" + encodeURIComponent(runId) + "/cancel", {
      method: "POST",
      headers: { "X-CSRF-Token": csrfToken },
      credentials: "same-origin",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(answer.error || "HTTP " + response.status);
    toast(answer.line || "cancel recorded");
  } catch (error) {
    button.disabled = false;
    button.textContent = "Cancel";
    toast("Could not cancel " + runId + ": " + error.message, true);
  }
}

// --- recent runs --------------------------------------------------------------

function outcomeClass(row) {
  if (row.retried) return "status-retried";
  if (row.outcome === "Completed") return "status-completed";
  if (row.outcome === "Cancelled") return "status-cancelled";
  return "status-failed";
}

function renderRecent(recent) {
  const body = document.querySelector("#recent tbody");
  body.replaceChildren(
    ...recent.map((row) => {
      const tr = el("tr");
      tr.dataset.runId = row.run_id;
      const when = el("td", "age");
      const ended = epoch(row.ended_at);
      when.dataset.since = ended ?? "";
      when.title = row.ended_at;
      const outcome = el("td");
      const label = row.outcome + (row.retried ? " (retried)" : "");
      outcome.append(el("span", "pill " + outcomeClass(row), label));
      const run = el("td", "mono", row.run_id);
      if (row.attempt && row.attempt > 1) run.append(el("span", "sub", "attempt " + row.attempt));
      tr.append(
        when,
        run,
        el("td", null, row.task || "–"),
        el("td", "mono", row.node_id || "–"),
        outcome,
        el("td", "num", duration(row.duration_seconds)),
        el("td", "num cost", usd(row.cost_usd)),
      );
      return tr;
    }),
  );
  document.getElementById("recent-empty").hidden = recent.length > 0;
}

// --- the clock: ages and elapsed times tick between events -------------------

function tick() {
  const now = serverNow();
  for (const cell of document.querySelectorAll("[data-since]")) {
    const since = parseFloat(cell.dataset.since);
    if (Number.isNaN(since)) continue;
    const seconds = Math.max(0, now - since);
    cell.textContent = cell.classList.contains("elapsed")
      ? "running " + duration(seconds)
      : ago(seconds);
  }
  for (const cell of document.querySelectorAll("[data-age]")) {
    const seconds = parseFloat(cell.dataset.age) + (now - parseFloat(cell.dataset.at));
    cell.textContent = ago(seconds);
  }
}

function toast(text, isError) {
  const box = document.getElementById("toast");
  box.textContent = text;
  box.classList.toggle("error", Boolean(isError));
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    box.hidden = true;
  }, 6000);
}

// --- the stream ---------------------------------------------------------------

function render(summary, withOutput) {
  clockSkew = Date.now() / 1000 - summary.server_time;
  renderTotals(summary.totals);
  renderNodes(summary.nodes);
  renderRuns(summary.runs, withOutput);
  renderRecent(summary.recent);
  document.getElementById("caps").textContent =
    "Keeps " + summary.caps.runs_in_progress + " runs in progress, " +
    Math.round(summary.caps.output_bytes / 1024) + " KiB of output each, " +
    summary.caps.recent_runs + " recent runs.";
  tick();
}

function connect() {
  const source = new EventSource("api/events");
  source.addEventListener("open", () => setConnection("live", "live"));
  source.addEventListener("error", () => setConnection("connecting", "reconnecting"));
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data), true));
  source.addEventListener("summary", (event) => render(JSON.parse(event.data), false));
  source.addEventListener("output", (event) => {
    const change = JSON.parse(event.data);
    const card = cards.get(change.run_id);
    if (card) appendOutput(card, change.pieces);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(tick, 1000);
});
