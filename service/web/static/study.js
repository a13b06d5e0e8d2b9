// The study page: header, plots, best parameters, per-fold scores and the trial table,
// kept up to date by the study's event stream (no reload).
import {
  API, FINISHED_STATES, VIEWS, ApiError, api, badge, copyButton, el, fmtDuration, fmtTime, fmtValue,
  markNav, progressBar, throttle, timingText,
} from "./common.js";
import { curveTraces, foldTraces, historyTraces, importanceTraces, parallelTrace, plotLayout } from "./study_plots.js";

const studyId = decodeURIComponent(location.pathname.split("/")[2] || "");
const base = `${VIEWS}/studies/${encodeURIComponent(studyId)}`;
const TOP_CURVES = 10;
const RECENT_CURVES = 10;
const TABLE_PAGE = 25;

const page = {
  study: null,
  space: [],
  complete: { number: [], value: [], params: {} },
  seen: new Set(), // numbers of complete trials already in `complete`
  best: null, // trial view of the best trial
  selected: null, // trial view of the clicked trial
  curves: new Map(), // number -> {number, state, value, steps, values}
  importance: null,
  table: { offset: 0, sort: "-number", state: "" },
  source: null,
};

const $ = (id) => document.getElementById(id);
const plotConfig = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

// ---- Plotly loads as a classic deferred script; wait for it --------------------------------
const plotlyReady = new Promise((resolve) => {
  const check = () => (window.Plotly ? resolve(window.Plotly) : setTimeout(check, 20));
  check();
});

function placeholder(id, text) {
  const node = $(id);
  if (window.Plotly && node.classList.contains("js-plotly-plot")) window.Plotly.purge(node);
  node.replaceChildren(el("div", { class: "placeholder" }, text));
  node.dataset.points = "0";
}

async function plot(id, traces, layout) {
  const Plotly = await plotlyReady;
  const node = $(id);
  if (!node.classList.contains("js-plotly-plot")) node.replaceChildren();
  await Plotly.react(node, traces, plotLayout(layout), plotConfig);
  return node;
}

// ---- Header --------------------------------------------------------------------------------
function fact(label, value, title = "") {
  return el("div", { class: "fact", title }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function renderHead() {
  const s = page.study;
  document.title = `${s.name} · hpo`;
  $("study-name").textContent = s.name;
  $("study-state").replaceChildren(badge(s.state));
  $("study-id").textContent = s.id;
  $("study-progress").replaceChildren(progressBar(s));
  const spec = s.spec || {};
  const dataset = spec.dataset ? spec.dataset.builtin || spec.dataset.id || spec.dataset.path : "—";
  const t = s.trials;
  $("facts").replaceChildren(
    fact("Best " + s.metric, s.best_value === null ? "—" : fmtValue(s.best_value),
      s.best_trial !== null ? `trial #${s.best_trial}` : ""),
    fact("Trials", `${t.complete} complete · ${t.pruned} pruned · ${t.failed} failed · ${t.running} running`),
    fact("Timing", timingText(s)),
    fact("Sampler", spec.sampler ? `${spec.sampler.name} · ${spec.pruner.name} pruner` : "—"),
    fact("Model", spec.model ? `${spec.model.cell} × ${spec.model.num_layers}${spec.model.bidirectional ? " (bi)" : ""}` : "—"),
    fact("Data", `${dataset} · ${spec.cv ? spec.cv.folds : "?"} folds`),
  );
  const running = ["queued", "running"].includes(s.state);
  $("cancel").classList.toggle("hidden", !running);
  $("resume").classList.toggle("hidden", s.state !== "cancelled");
  if (s.dashboard_url) {
    $("dashboard-link").href = s.dashboard_url;
    $("dashboard-link").classList.remove("hidden");
  }
  $("json-link").href = `${API}/studies/${encodeURIComponent(s.id)}`;
  $("json-link").classList.remove("hidden");
  $("head-message").textContent = s.state === "failed" && s.reason ? `The study failed: ${s.reason}` : "";
}

async function studyAction(action) {
  const button = $(action);
  button.disabled = true;
  try {
    const study = await api(`${API}/studies/${encodeURIComponent(studyId)}/${action}`, { method: "POST" });
    page.study = { ...page.study, ...study };
    renderHead();
    connect(); // a resumed study streams again
  } catch (err) {
    $("head-message").textContent = `Could not ${action} the study: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

// ---- History and parallel coordinates (complete trials, as columns) -------------------------
function addComplete(trial) {
  if (trial.state !== "complete" || trial.value === null || page.seen.has(trial.number)) return false;
  page.seen.add(trial.number);
  page.complete.number.push(trial.number);
  page.complete.value.push(trial.value);
  for (const p of page.space) {
    (page.complete.params[p.name] ||= []).push(trial.params[p.name] ?? null);
  }
  return true;
}

async function renderHistory() {
  const c = page.complete;
  const s = page.study;
  $("history-hint").textContent = c.number.length ? `${c.number.length} complete trials · click a point for details` : "";
  if (!c.number.length) {
    placeholder("history", "No complete trial yet: each trial's score appears here as it completes.");
    return;
  }
  const span = Math.max(...c.number) - Math.min(...c.number);
  const node = await plot("history", historyTraces(c, s.direction, page.selected), {
    xaxis: { title: { text: "trial" }, tickformat: "d", dtick: span < 10 ? 1 : undefined },
    yaxis: { title: { text: s.metric } },
  });
  node.dataset.points = String(c.number.length);
  if (!node.dataset.bound) {
    node.dataset.bound = "1";
    node.on("plotly_click", (event) => {
      const number = event.points && event.points[0] && event.points[0].customdata;
      if (number !== undefined && number !== null) selectTrial(Number(number));
    });
  }
}

function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl") || canvas.getContext("experimental-webgl"));
  } catch {
    return false;
  }
}

async function renderParallel() {
  const c = page.complete;
  const fixed = page.space.filter((p) => p.fixed !== null).map((p) => `${p.name} = ${p.fixed}`);
  const logs = page.space.filter((p) => p.fixed === null && p.log && !p.choices).map((p) => p.name);
  $("parallel-hint").textContent = [logs.length ? `log axes: ${logs.join(", ")}` : "", fixed.length ? `fixed: ${fixed.join(", ")}` : ""]
    .filter(Boolean).join(" · ");
  if (!c.number.length) {
    placeholder("parallel", "Appears when a trial completes: one line per trial, across the searched parameters.");
    return;
  }
  if (!page.space.some((p) => p.fixed === null)) {
    placeholder("parallel", "Every parameter is fixed in this study; there is nothing to compare.");
    return;
  }
  if (!webglAvailable()) {
    placeholder("parallel", "This view needs WebGL, which this browser has turned off. The trial table lists the same parameters.");
    return;
  }
  const narrow = window.innerWidth < 640;
  const node = await plot("parallel", [parallelTrace(c, page.space, page.study, narrow)],
    { margin: narrow ? { l: 34, r: 34, t: 40, b: 20 } : { l: 60, r: 50, t: 40, b: 20 } });
  node.dataset.points = String(c.number.length);
}

const refreshComplete = throttle(() => {
  renderHistory();
  renderParallel();
}, 500);

// ---- Learning curves -----------------------------------------------------------------------
function keepCurves() {
  const dir = page.study.direction === "maximize" ? -1 : 1;
  const all = [...page.curves.values()];
  const keep = new Set();
  all.filter((c) => c.state === "complete" && c.value !== null)
    .sort((a, b) => dir * (a.value - b.value))
    .slice(0, TOP_CURVES)
    .forEach((c) => keep.add(c.number));
  all.sort((a, b) => b.number - a.number).slice(0, RECENT_CURVES).forEach((c) => keep.add(c.number));
  if (page.study.best_trial !== null) keep.add(page.study.best_trial);
  if (page.selected) keep.add(page.selected.number);
  for (const number of page.curves.keys()) if (!keep.has(number)) page.curves.delete(number);
}

function upsertCurve(trial) {
  const points = trial.intermediate_values || [];
  if (!points.length) return false;
  page.curves.set(trial.number, {
    number: trial.number,
    state: trial.state,
    value: trial.value,
    steps: points.map((p) => p.step),
    values: points.map((p) => p.value),
  });
  return true;
}

async function loadCurves(extra = []) {
  const q = new URLSearchParams({ top: String(TOP_CURVES), recent: String(RECENT_CURVES) });
  if (extra.length) q.set("trials", extra.join(","));
  try {
    const data = await api(`${base}/curves?${q}`);
    for (const c of data.curves) page.curves.set(c.number, c);
    renderCurves();
  } catch (err) {
    placeholder("curves", `Could not load the learning curves: ${err.message}`);
  }
}

async function renderCurves() {
  const s = page.study;
  const perFold = s.spec && s.spec.pruner && s.spec.pruner.name === "wilcoxon";
  if (!page.curves.size) {
    placeholder("curves", "No epoch reported yet: each trial's per-epoch validation score appears here while it trains.");
    $("curves-hint").textContent = "";
    return;
  }
  keepCurves();
  const curves = [...page.curves.values()].sort((a, b) => a.number - b.number);
  const pruned = curves.filter((c) => c.state === "pruned").length;
  $("curves-hint").textContent = `best ${TOP_CURVES} and latest ${RECENT_CURVES}` + (pruned ? ` · ✕ marks where a pruned trial stopped` : "");
  // Steps count from 0; people count epochs (and folds) from 1, as the trial table does.
  const last = perFold ? s.spec.cv.folds : s.spec.training.max_epochs;
  const node = await plot("curves", curveTraces(curves, s.best_trial, page.selected && page.selected.number), {
    xaxis: { title: { text: perFold ? "fold" : "epoch" }, range: [0.8, last + 0.2], tickformat: "d", dtick: last <= 12 ? 1 : undefined },
    yaxis: { title: { text: `validation ${s.metric}` } },
  });
  node.dataset.curves = String(curves.length);
  if (!node.dataset.bound) {
    node.dataset.bound = "1";
    node.on("plotly_click", (event) => {
      const number = event.points && event.points[0] && event.points[0].customdata;
      if (number !== undefined && number !== null) selectTrial(Number(number));
    });
  }
}

const refreshCurves = throttle(renderCurves, 500);

// ---- Importance ------------------------------------------------------------------------------
async function loadImportance() {
  try {
    page.importance = await api(`${base}/importance`);
  } catch (err) {
    placeholder("importance", `Could not compute the importances: ${err.message}`);
    return;
  }
  const imp = page.importance;
  if (imp.status !== "ok") {
    $("importance-hint").textContent = "";
    placeholder("importance", imp.status === "not_enough"
      ? `Not enough trials yet: importance ${imp.message}.`
      : imp.message);
    return;
  }
  const evaluator = imp.evaluator.replace("ImportanceEvaluator", "").replace("PedAnova", "PED-ANOVA");
  $("importance-hint").textContent = `${evaluator} over ${imp.n_complete} complete trials`;
  await plot("importance", importanceTraces(imp.importances), {
    margin: { l: 90, r: 16, t: 10, b: 40 },
    xaxis: { title: { text: "share of the score's variation" }, range: [0, 1] },
  });
}

const refreshImportance = throttle(loadImportance, 5000);

// ---- Best parameters and per-fold scores --------------------------------------------------
function snippets(s) {
  const url = location.origin;
  return {
    curl: `curl -s ${url}${API}/studies/${s.id}/best`,
    python: `from hpo.client import Client\n\nbest = Client("${url}").best("${s.id}")\nprint(best["params"])`,
  };
}

function codeBlock(title, text, id) {
  return el("div", {},
    el("div", { class: "code-head" }, el("span", {}, title), copyButton(title.startsWith("Parameters") ? "Copy as JSON" : "Copy", () => text)),
    el("pre", { class: "code", id }, text));
}

function renderBest() {
  const s = page.study;
  const best = page.best;
  const code = snippets(s);
  const children = [];
  if (best) {
    $("best-hint").textContent = `trial #${best.number} · ${s.metric} ${fmtValue(best.value)}`;
    children.push(codeBlock("Parameters (JSON)", JSON.stringify(best.params, null, 2), "best-json"));
  } else {
    $("best-hint").textContent = "";
    children.push(el("div", { class: "placeholder" }, "No complete trial yet: the best parameters appear here as soon as one completes."));
  }
  children.push(codeBlock("Fetch them with curl", code.curl, "snippet-curl"), codeBlock("… or from Python", code.python, "snippet-python"));
  $("best").replaceChildren(...children);
}

async function renderFolds() {
  const best = page.best;
  const selected = page.selected && (!best || page.selected.number !== best.number) ? page.selected : null;
  const shown = [best, selected].filter((t) => t && t.fold_scores && t.fold_scores.length);
  if (!shown.length) {
    placeholder("folds", best || selected
      ? "This trial has no per-fold scores (it stopped before its folds finished)."
      : "No complete trial yet: the best trial's score on each fold appears here.");
  } else {
    await plot("folds", foldTraces(best, selected), {
      barmode: "group",
      yaxis: { title: { text: page.study.metric } },
      xaxis: { title: { text: "fold" } },
    });
  }
  renderSelected();
}

function renderSelected() {
  const t = page.selected;
  if (!t) {
    $("selected").replaceChildren();
    return;
  }
  const params = Object.entries(t.params).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, fmtValue(v, 5))]);
  $("selected").replaceChildren(el("div", { class: "stack", style: "margin-top:10px;gap:8px" },
    el("div", { class: "card-head" },
      el("strong", {}, `Trial #${t.number} `, badge(t.state)),
      el("button", { type: "button", class: "small", onclick: () => selectTrial(null) }, "Clear")),
    el("dl", { class: "kv" },
      el("dt", {}, page.study.metric), el("dd", {}, fmtValue(t.value)),
      el("dt", {}, "folds"), el("dd", {}, t.fold_scores ? t.fold_scores.map((v) => fmtValue(v)).join(", ") : "—"),
      el("dt", {}, "duration"), el("dd", {}, fmtDuration(t.duration_s)),
      ...params,
      ...(t.fail_reason ? [el("dt", {}, "failed"), el("dd", {}, t.fail_reason)] : [])),
  ));
}

async function fetchTrial(number) {
  return api(`${base}/trials/${number}`);
}

async function selectTrial(number) {
  if (number === null) {
    page.selected = null;
  } else {
    try {
      page.selected = await fetchTrial(number);
    } catch (err) {
      $("selected").replaceChildren(el("div", { class: "message" }, `Could not load trial #${number}: ${err.message}`));
      return;
    }
    upsertCurve(page.selected);
  }
  for (const row of document.querySelectorAll("#trials tbody tr")) {
    row.classList.toggle("selected", page.selected !== null && Number(row.dataset.number) === page.selected.number);
  }
  renderFolds();
  renderCurves();
  renderHistory();
}

async function updateBest(number) {
  if (number === null || (page.best && page.best.number === number)) return;
  try {
    page.best = await fetchTrial(number);
  } catch {
    return; // the next study event tries again
  }
  renderBest();
  renderFolds();
}

// ---- Trial table ---------------------------------------------------------------------------
const SORTABLE = { number: "number", value: "value", duration_s: "duration_s", started_at: "started_at" };

function tableColumns() {
  const params = page.space.filter((p) => p.fixed === null).map((p) => ({ key: `param:${p.name}`, label: p.name, num: true }));
  return [
    { key: "number", label: "#", num: true, sort: "number" },
    { key: "state", label: "State" },
    { key: "value", label: page.study.metric, num: true, sort: "value" },
    ...params,
    { key: "folds", label: "Folds ± std", num: true },
    { key: "last_step", label: "Epochs", num: true },
    { key: "duration_s", label: "Duration", num: true, sort: "duration_s" },
    { key: "started_at", label: "Started", sort: "started_at" },
  ];
}

function cell(trial, column) {
  if (column.key.startsWith("param:")) return fmtValue(trial.params[column.key.slice(6)], 4);
  switch (column.key) {
    case "number": return String(trial.number);
    case "state": return badge(trial.state);
    case "value": return fmtValue(trial.value);
    case "folds": return trial.fold_scores ? `${trial.fold_scores.length} ± ${fmtValue(trial.fold_std, 2)}` : "—";
    case "last_step": return trial.last_step === null ? "—" : String(trial.last_step + 1);
    case "duration_s": return trial.state === "running" ? "running" : fmtDuration(trial.duration_s);
    case "started_at": return fmtTime(trial.started_at);
    default: return "";
  }
}

function renderTableHead() {
  const sortKey = page.table.sort.replace(/^-/, "");
  const descending = page.table.sort.startsWith("-");
  const row = el("tr", {}, ...tableColumns().map((c) => {
    const th = el("th", { class: [c.num ? "num" : "", c.sort ? "sortable" : ""].join(" ").trim() || null }, c.label);
    if (c.sort) {
      th.setAttribute("aria-sort", sortKey === c.sort ? (descending ? "descending" : "ascending") : "none");
      th.title = "sort";
      th.addEventListener("click", () => {
        page.table.sort = sortKey === c.sort && !descending ? `-${c.sort}` : c.sort;
        page.table.offset = 0;
        renderTableHead();
        loadTable();
      });
    }
    return th;
  }));
  $("trials").tHead.replaceChildren(row);
}

let tableRequest = 0;
async function loadTable() {
  const t = page.table;
  const q = new URLSearchParams({ limit: String(TABLE_PAGE), offset: String(t.offset), sort: t.sort });
  if (t.state) q.set("state", t.state);
  const request = ++tableRequest;
  let data;
  try {
    data = await api(`${base}/trials?${q}`);
  } catch (err) {
    $("trials-empty").textContent = `Could not load the trials: ${err.message}`;
    $("trials-empty").classList.remove("hidden");
    return;
  }
  if (request !== tableRequest) return; // a newer request is on its way
  const columns = tableColumns();
  const rows = data.items.map((trial) => el("tr", {
    class: ["clickable", page.selected && page.selected.number === trial.number ? "selected" : ""].join(" ").trim(),
    "data-number": trial.number,
    onclick: () => selectTrial(trial.number),
  }, ...columns.map((c) => el("td", { class: c.num ? "num" : null }, cell(trial, c)))));
  $("trials").tBodies[0].replaceChildren(...rows);
  $("trials").dataset.rows = String(rows.length);
  const empty = $("trials-empty");
  if (data.total === 0) {
    empty.textContent = t.state ? `No ${t.state} trials.` : "No trials yet: a worker picks the study up within seconds.";
    empty.classList.remove("hidden");
  } else {
    empty.classList.add("hidden");
  }
  const pager = $("trials-pager");
  pager.replaceChildren();
  if (data.total > data.limit) {
    const first = data.offset + 1;
    const last = Math.min(data.offset + data.limit, data.total);
    const go = (offset) => () => { page.table.offset = Math.max(0, offset); loadTable(); };
    pager.append(
      el("span", {}, `${first}–${last} of ${data.total}`),
      el("button", { type: "button", class: "small", disabled: data.offset === 0, onclick: go(0) }, "« First"),
      el("button", { type: "button", class: "small", disabled: data.offset === 0, onclick: go(data.offset - data.limit) }, "‹ Prev"),
      el("button", { type: "button", class: "small", disabled: last >= data.total, onclick: go(data.offset + data.limit) }, "Next ›"),
    );
  }
}

const refreshTable = throttle(loadTable, 1000);

// ---- Live events ---------------------------------------------------------------------------
function setLive(text, cls) {
  const live = $("live");
  live.textContent = text;
  live.className = `live ${cls || ""}`.trim();
}

function settled(study) {
  return ["completed", "failed"].includes(study.state) && study.trials.running === 0;
}

function onStudyEvent(event) {
  const study = JSON.parse(event.data);
  const before = page.study;
  page.study = { ...before, ...study, spec: before.spec, dashboard_url: before.dashboard_url };
  renderHead();
  const countsChanged = JSON.stringify(before.trials) !== JSON.stringify(study.trials);
  if (countsChanged) {
    refreshTable();
    if (study.trials.complete !== before.trials.complete) refreshImportance();
  }
  if (study.best_trial !== before.best_trial) updateBest(study.best_trial);
  if (settled(study)) {
    page.source.close();
    setLive(`${study.state}; no more updates`, "");
  }
}

function onTrialEvent(event) {
  const trial = JSON.parse(event.data);
  if (addComplete(trial)) refreshComplete();
  if (upsertCurve(trial)) refreshCurves();
  if (page.selected && page.selected.number === trial.number) {
    page.selected = trial;
    renderFolds();
  }
  refreshTable();
}

function connect() {
  if (page.source && page.source.readyState !== EventSource.CLOSED) return;
  const source = new EventSource(`${base}/events?last_event_id=${encodeURIComponent(page.eventId || 0)}`);
  page.source = source;
  source.addEventListener("open", () => setLive("live", "on"));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setLive("disconnected: reload to try again", "off");
    else setLive("reconnecting…", "off");
  });
  source.addEventListener("study", onStudyEvent);
  source.addEventListener("trial", onTrialEvent);
  source.addEventListener("deleted", () => {
    source.close();
    setLive("deleted", "off");
    $("head-message").textContent = "This study was deleted.";
    $("cancel").classList.add("hidden");
    $("resume").classList.add("hidden");
  });
}

// ---- Start -----------------------------------------------------------------------------------
async function start() {
  markNav();
  let overview;
  try {
    overview = await api(base);
  } catch (err) {
    const notFound = err instanceof ApiError && err.status === 404;
    $("study-name").textContent = notFound ? "No such study" : "Could not load the study";
    $("head-message").textContent = notFound ? `There is no study with id ${studyId}. ` : err.message;
    setLive("not connected", "off");
    for (const id of ["history", "curves", "importance", "parallel", "folds"]) placeholder(id, "—");
    $("best").replaceChildren();
    $("trials-empty").textContent = "—";
    return;
  }
  page.study = overview.study;
  page.space = overview.space;
  page.complete = overview.complete;
  page.seen = new Set(overview.complete.number);
  page.eventId = overview.event_id;
  if (overview.best) page.best = { ...overview.best, state: "complete" };
  $("spec").textContent = JSON.stringify(overview.study.spec, null, 2);
  renderHead();
  renderTableHead();
  renderBest();
  renderFolds();
  renderHistory();
  renderParallel();
  loadCurves();
  loadImportance();
  loadTable();
  if (settled(page.study)) setLive(`${page.study.state}; no more updates`, "");
  else connect();
}

$("cancel").addEventListener("click", () => studyAction("cancel"));
$("resume").addEventListener("click", () => studyAction("resume"));
$("trial-state").addEventListener("change", (event) => {
  page.table.state = event.target.value;
  page.table.offset = 0;
  loadTable();
});
start();
