// The study page: header, model panel, plots, best parameters, per-fold scores and the trial
// table, kept up to date by the study's event stream (no reload).
import {
  API, VIEWS, ApiError, api, badge, copyButton, el, fmtDuration, fmtValue, markNav, progressBar, throttle,
  timingText,
} from "./common.js";
import { ModelPanel } from "./study_model.js";
import { TrialTable } from "./study_table.js";
import {
  curveTraces, foldTraces, historyTraces, importanceTraces, parallelTrace, placeholder, plot, webglAvailable,
} from "./study_plots.js";

const studyId = decodeURIComponent(location.pathname.split("/")[2] || "");
const base = `${VIEWS}/studies/${encodeURIComponent(studyId)}`; // what the page draws, aggregated
const rest = `${API}/studies/${encodeURIComponent(studyId)}`; // trials, events, cancel and resume: the REST resources
const TOP_CURVES = 10;
const RECENT_CURVES = 10;
// Lines beyond a few hundred add little to the picture and cost seconds to draw without a GPU.
const PARALLEL_MAX_LINES = 300;

const page = {
  study: null,
  space: [],
  complete: { number: [], value: [], params: {}, total: 0 }, // total: complete trials (columns hold a sample past 2,000)
  seen: new Set(), // numbers of complete trials already in `complete`
  pruned: { number: [], value: [] }, // pruned trials' last reported scores (the history's "include pruned")
  seenPruned: new Set(),
  best: null, // trial view of the best trial
  selected: null, // trial view of the clicked trial
  curves: new Map(), // number -> {number, state, value, steps, values}
  importance: null,
  source: null,
};

const $ = (id) => document.getElementById(id);

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
  const dataset = s.dataset_name || (spec.dataset ? spec.dataset.id || spec.dataset.path : "—");
  const t = s.trials;
  $("facts").replaceChildren(
    fact("Best " + s.metric, s.best_value === null ? "—" : fmtValue(s.best_value),
      s.best_trial !== null ? `trial #${s.best_trial}` : ""),
    fact("Trials", `${t.complete} complete · ${t.pruned} pruned · ${t.failed} failed · ${t.running} running`),
    fact("Timing", timingText(s)),
    fact("Sampler", spec.sampler ? `${spec.sampler.name} · ${spec.pruner.name} pruner` : "—"),
    fact("Model", spec.model ? `${spec.model.cell} × ${spec.model.num_layers}${spec.model.bidirectional ? " (bi)" : ""}` : "—"),
    fact("Data", `${dataset} · ${spec.cv ? spec.cv.folds : "?"} folds${spec.cv && spec.cv.repeats > 1 ? ` × ${spec.cv.repeats} repeats` : ""}`),
  );
  const running = ["queued", "running"].includes(s.state);
  $("cancel").classList.toggle("hidden", !running);
  // A failed study may be retried: the server does, or answers why not (shown below the header).
  $("resume").classList.toggle("hidden", !["cancelled", "failed"].includes(s.state));
  $("resume").textContent = s.state === "failed" ? "Retry study" : "Resume study";
  if (s.dashboard_url) {
    $("dashboard-link").href = s.dashboard_url;
    $("dashboard-link").classList.remove("hidden");
  }
  $("json-link").href = rest;
  $("json-link").classList.remove("hidden");
  $("head-message").textContent = s.state === "failed" && s.reason ? `The study failed: ${s.reason}` : "";
  model.setStudy(s);
}

async function studyAction(action) {
  const button = $(action);
  button.disabled = true;
  try {
    const study = await api(`${rest}/${action}`, { method: "POST" });
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
// A poll of the event stream sends its trials, then the study with counts derived from those
// same trials: trials are added as they come, and drawn (with the counts) at the study event.
function addPruned(trial) {
  if (trial.state !== "pruned" || trial.last_value === null || page.seenPruned.has(trial.number)) return false;
  page.seenPruned.add(trial.number);
  page.pruned.number.push(trial.number);
  page.pruned.value.push(trial.last_value);
  page.pruned.total += 1;
  return true;
}

function addComplete(trial) {
  if (trial.state !== "complete" || trial.value === null || page.seen.has(trial.number)) return false;
  page.seen.add(trial.number);
  page.complete.number.push(trial.number);
  page.complete.value.push(trial.value);
  page.complete.total += 1;
  for (const p of page.space) {
    (page.complete.params[p.name] ||= []).push(trial.params[p.name] ?? null);
  }
  return true;
}

function renderHistoryHint() {
  const c = page.complete;
  const pruned = $("history-pruned").checked ? page.pruned.total : 0;
  const drawn = c.number.length < c.total ? ` (${c.number.length} drawn: every new best, the best ${PARALLEL_MAX_LINES}, evenly spaced others)` : "";
  $("history-hint").textContent = c.number.length || pruned
    ? `${c.total} complete trials${drawn}` + (pruned ? ` · ${pruned} pruned (last epoch's score)` : "") + " · click a point for details"
    : "";
}

async function renderHistory() {
  const c = page.complete;
  const s = page.study;
  const pruned = $("history-pruned").checked ? page.pruned : null;
  renderHistoryHint();
  if (!c.number.length && !(pruned && pruned.number.length)) {
    placeholder("history", "No complete trial yet: each trial's score appears here as it completes.");
    return;
  }
  const numbers = [...c.number, ...(pruned ? pruned.number : [])];
  const span = Math.max(...numbers) - Math.min(...numbers);
  const node = await plot("history", historyTraces(c, s.direction, page.selected, pruned), {
    xaxis: { title: { text: "trial" }, tickformat: "d", dtick: span < 10 ? 1 : undefined },
    yaxis: { title: { text: s.metric } },
  });
  node.dataset.points = String(c.number.length);
  node.dataset.pruned = String(pruned ? pruned.number.length : 0);
  if (!node.dataset.bound) {
    node.dataset.bound = "1";
    node.on("plotly_click", (event) => {
      const number = event.points && event.points[0] && event.points[0].customdata;
      if (number !== undefined && number !== null) selectTrial(Number(number));
    });
  }
}

/** The `limit` best complete trials' columns (all of them when there are fewer). */
function bestColumns(c, limit) {
  if (c.number.length <= limit) return c;
  const sign = page.study.direction === "maximize" ? -1 : 1;
  const order = c.value.map((_, i) => i).filter((i) => c.value[i] !== null)
    .sort((a, b) => sign * (c.value[a] - c.value[b])).slice(0, limit);
  const pick = (column) => order.map((i) => column[i]);
  return {
    number: pick(c.number),
    value: pick(c.value),
    params: Object.fromEntries(Object.entries(c.params).map(([name, column]) => [name, pick(column)])),
  };
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
  const shown = bestColumns(c, PARALLEL_MAX_LINES);
  if (shown.number.length < c.total) {
    $("parallel-hint").textContent = `best ${shown.number.length} of ${c.total} trials · ${$("parallel-hint").textContent}`;
  }
  const node = await plot("parallel", [parallelTrace(shown, page.space, page.study, narrow)],
    { margin: narrow ? { l: 34, r: 48, t: 64, b: 20 } : { l: 60, r: 50, t: 40, b: 20 } });
  node.dataset.points = String(shown.number.length);
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

function fetchCurves(extra = []) {
  const q = new URLSearchParams({ top: String(TOP_CURVES), recent: String(RECENT_CURVES) });
  if (extra.length) q.set("trials", extra.join(","));
  return api(`${base}/curves?${q}`);
}

// `answer`: a `fetchCurves()` sent earlier, or a new request.
async function loadCurves(extra = [], answer = fetchCurves(extra)) {
  try {
    const data = await answer;
    for (const c of data.curves) page.curves.set(c.number, c);
    await renderCurves();
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
  // Fitted to the data, folds x repeats and max_epochs may exceed the stored spec's: the longest curve counts too.
  const configured = perFold ? s.spec.cv.folds * (s.spec.cv.repeats || 1) : s.spec.training.max_epochs;
  const last = Math.max(configured, ...curves.map((c) => (c.steps.length ? c.steps[c.steps.length - 1] + 1 : 0)));
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
// Over the complete trials the header counts, so that the two agree: `sent` (asked for before
// the header's count was known) serves when it counted as many, else they are asked for.
async function loadImportance(sent = null) {
  const complete = page.study.trials.complete;
  try {
    const answer = sent && await sent;
    page.importance = answer && answer.n_complete === complete
      ? answer : await api(`${base}/importance?complete=${complete}`);
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
  renderImportanceHint();
  await plot("importance", importanceTraces(imp.importances), {
    margin: { l: 90, r: 16, t: 10, b: 40 },
    // room right of the longest bar for its percentage
    xaxis: { title: { text: "share of the score's variation" }, range: [0, 1.18], tickvals: [0, 0.25, 0.5, 0.75, 1] },
  });
}

function renderImportanceHint() {
  const imp = page.importance;
  if (!imp || imp.status !== "ok") return;
  const evaluator = imp.evaluator.replace("ImportanceEvaluator", "").replace("PedAnova", "PED-ANOVA");
  const behind = imp.n_complete !== page.study.trials.complete; // until the refresh below answers
  // Past the server's limit, over an evenly spaced sample of the complete trials: said so.
  const over = imp.sample ? `a sample of ${imp.sample.size} of ${imp.sample.of}` : `${imp.n_complete}`;
  $("importance-hint").textContent = `${evaluator} over ${over} complete trials` + (behind ? " · updating…" : "");
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
  children.push(codeBlock("Fetch them with curl", code.curl, "snippet-curl"), codeBlock("… or from Python", code.python, "snippet-python"),
    el("div", { class: "hint" }, "Where the service has API keys, add ", el("code", {}, '-H "Authorization: Bearer $KEY"'),
      " to curl, or ", el("code", {}, "api_key=KEY"), " to Client."));
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
      yaxis: { title: { text: page.study.metric }, range: foldRange(shown) },
      xaxis: { title: { text: "fold" } },
    });
  }
  renderSelected();
}

/** The per-fold chart's y range: the shown scores with a margin, not from 0, so that the
 * differences between folds (often a few hundredths) can be seen. */
function foldRange(trials) {
  const scores = trials.flatMap((t) => t.fold_scores).filter((v) => v !== null && Number.isFinite(v));
  if (!scores.length) return undefined;
  const low = Math.min(...scores);
  const high = Math.max(...scores);
  const margin = Math.max((high - low) * 0.25, Math.abs(high) * 0.01, 1e-6);
  return [low - margin, high + margin];
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
  return api(`${rest}/trials/${number}`);
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
  table.markSelected(page.selected ? page.selected.number : null);
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
const table = new TrialTable({
  url: `${rest}/trials`,
  table: $("trials"),
  empty: $("trials-empty"),
  pager: $("trials-pager"),
  context: () => page,
  onSelect: (number) => selectTrial(number),
});
const loadTable = () => table.load();
const refreshTable = throttle(loadTable, 1000);

// ---- Model ---------------------------------------------------------------------------------
const model = new ModelPanel({ studyId, body: $("model"), state: $("model-state"), message: $("model-message") });

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
    renderHistoryHint(); // with the header: the same snapshot's counts
    refreshComplete();
    refreshTable();
    if (study.trials.complete !== before.trials.complete) {
      renderImportanceHint();
      refreshImportance();
    }
  }
  if (study.best_trial !== before.best_trial) updateBest(study.best_trial);
  if (settled(study)) {
    page.source.close();
    setLive(`${study.state}; no more updates`, "");
    loadTable(); // the last word, now rather than at the next throttled refresh
    loadImportance();
  }
}

function onTrialEvent(event) {
  const trial = JSON.parse(event.data);
  addComplete(trial); // drawn at this poll's study event, with the counts
  addPruned(trial);
  if (upsertCurve(trial)) refreshCurves();
  if (page.selected && page.selected.number === trial.number) {
    page.selected = trial;
    renderFolds();
  }
  refreshTable();
}

function connect() {
  if (page.source && page.source.readyState !== EventSource.CLOSED) return;
  const source = new EventSource(`${rest}/events?last_event_id=${encodeURIComponent(page.eventId || 0)}`);
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
// A request sent before its answer is awaited: its failure is reported where it is awaited.
function early(request) {
  request.catch(() => {});
  return request;
}

async function start() {
  markNav();
  // Sent at once, with the overview's: the server answers them while the browser runs Plotly
  // (a large script, run after this one), and they are drawn once the overview is in.
  const curves = early(fetchCurves());
  const importance = early(api(`${base}/importance`));
  const trials = early(table.fetch());
  let overview;
  try {
    overview = await api(base);
  } catch (err) {
    const notFound = err instanceof ApiError && err.status === 404;
    $("study-name").textContent = notFound ? "No such study" : "Could not load the study";
    const why = notFound ? `There is no study with id ${studyId} (it may have been deleted). ` : `${err.message}. `;
    $("head-message").replaceChildren(why, el("a", { href: "/" }, "All studies"));
    setLive("not connected", "off");
    for (const section of document.querySelectorAll("main > :not(#head)")) section.classList.add("hidden");
    return;
  }
  page.study = overview.study;
  page.space = overview.space;
  page.complete = overview.complete;
  page.seen = new Set(overview.complete.number);
  page.pruned = overview.pruned;
  page.seenPruned = new Set(overview.pruned.number);
  page.eventId = overview.event_id;
  if (overview.best) page.best = { ...overview.best, state: "complete" };
  $("spec").textContent = JSON.stringify(overview.study.spec, null, 2);
  renderHead();
  table.renderHead();
  renderBest();
  if (settled(page.study)) setLive(`${page.study.state}; no more updates`, "");
  else connect();
  await Promise.all([renderFolds(), renderHistory(), loadCurves([], curves), loadImportance(importance),
                     table.load(trials), model.load()]);
  performance.mark("hpo:ready");
  document.body.dataset.ready = "true"; // all but the parallel coordinates drawn
  // Last: without a GPU (software WebGL) its canvases take a second or more to draw.
  await renderParallel();
  performance.mark("hpo:loaded");
  document.body.dataset.loaded = "true"; // every panel drawn once (tests and the benchmark wait for it)
}

$("cancel").addEventListener("click", () => studyAction("cancel"));
$("resume").addEventListener("click", () => studyAction("resume"));
$("trial-state").addEventListener("change", (event) => table.filter(event.target.value));
$("history-pruned").addEventListener("change", () => renderHistory());
start();
