// The new-study page: a form for the common fields, a YAML editor for the whole spec, a
// dataset upload; the server validates, and each refusal is shown next to its field.
import { API, ApiError, api, el, markNav } from "./common.js";

const $ = (id) => document.getElementById(id);
// What the spec accepts, written into the page by the server from the spec itself.
const SPEC = JSON.parse($("spec-choices").textContent);
const METRICS = SPEC.metrics_by_task;
const BUILTIN_TASKS = SPEC.builtin_tasks;
// Every search-space parameter: its modes, the spec's default, the values a categorical one accepts.
const PARAMS = SPEC.search_params;

// ---- The search-space rows -------------------------------------------------------------------
const MODE_LABELS = { range: "range", choices: "choices", fixed: "fixed value" };

function paramRow(p) {
  const id = (part) => `f-search_space-${p.name}-${part}`;
  const mode = el("select", { id: id("mode"), "aria-label": `${p.name} kind` },
    ...p.modes.map((m) => el("option", { value: m }, m === "default" ? `default (${p.default})` : MODE_LABELS[m])));
  mode.value = p.mode;
  const parts = [el("span", { class: "pinputs", "data-mode": "default" })];
  if (p.modes.includes("range")) {
    parts.push(el("span", { class: "pinputs", "data-mode": "range" },
      el("label", {}, "low ", el("input", { id: id("low"), type: "text", inputmode: "decimal", value: p.low || "" })),
      el("label", {}, "high ", el("input", { id: id("high"), type: "text", inputmode: "decimal", value: p.high || "" })),
      el("label", {}, el("input", { id: id("log"), type: "checkbox", checked: Boolean(p.log) }), " log scale")));
  }
  if (p.values) { // categorical: the spec's own values, as boxes to tick and a list to pick one from
    parts.push(el("span", { class: "pinputs", "data-mode": "choices" },
      ...p.values.map((v, i) => el("label", {}, el("input", { id: id(`choice-${i}`), type: "checkbox" }), ` ${v}`))));
    parts.push(el("span", { class: "pinputs", "data-mode": "fixed" },
      el("select", { id: id("value"), "aria-label": `${p.name} value` }, ...p.values.map((v, i) => el("option", { value: String(i) }, String(v))))));
  } else {
    parts.push(el("span", { class: "pinputs", "data-mode": "choices" },
      el("input", {
        id: id("choices"), type: "text", class: "wide", value: p.choices || "",
        placeholder: "e.g. 32, 64, 128", "aria-label": `${p.name} choices`,
      })));
    parts.push(el("span", { class: "pinputs", "data-mode": "fixed" },
      el("input", { id: id("value"), type: "text", inputmode: "decimal", value: p.value || "", placeholder: "value", "aria-label": `${p.name} value` })));
  }
  const inputs = el("div", {}, ...parts);
  const row = el("div", { class: "param-row", "data-field": `search_space.${p.name}` },
    el("span", { class: "pname" }, p.name), mode, inputs, el("div", { class: "field-error" }));
  const show = () => {
    for (const part of inputs.children) part.classList.toggle("hidden", part.dataset.mode !== mode.value);
  };
  mode.addEventListener("change", show);
  show();
  return row;
}

function number(text) {
  const t = String(text).trim();
  if (t === "") return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : t; // a non-number goes to the server, which names the field
}

/** The row's entry of the spec's search space; `undefined` leaves the spec's default. */
function paramSpec(p) {
  const get = (part) => $(`f-search_space-${p.name}-${part}`);
  const mode = get("mode").value;
  if (mode === "default") return undefined;
  if (p.values) {
    if (mode === "fixed") return { value: p.values[Number(get("value").value)] };
    return { choices: p.values.filter((_, i) => get(`choice-${i}`).checked) };
  }
  if (mode === "fixed") return { value: number(get("value").value) };
  if (mode === "choices") {
    return { choices: get("choices").value.split(",").map((s) => s.trim()).filter(Boolean).map(number) };
  }
  const spec = { low: number(get("low").value), high: number(get("high").value), log: get("log").checked };
  return Object.fromEntries(Object.entries(spec).filter(([, v]) => v !== undefined));
}

// ---- Form -> spec ------------------------------------------------------------------------------
function value(id) {
  return $(id).value;
}

function prune(obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined && v !== ""));
}

function buildSpec() {
  const source = document.querySelector('input[name="dataset-source"]:checked').value;
  const dataset = source === "builtin" ? { builtin: value("f-dataset-builtin") } : { id: value("f-dataset-id") || undefined };
  const searchSpace = {};
  for (const p of PARAMS) {
    const entry = paramSpec(p);
    if (entry !== undefined) searchSpace[p.name] = entry;
  }
  return prune({
    name: value("f-name").trim(),
    task: value("f-task"),
    dataset: prune(dataset),
    model: prune({ cell: value("f-model-cell"), num_layers: number(value("f-model-num_layers")), bidirectional: $("f-model-bidirectional").checked }),
    search_space: searchSpace,
    sampler: prune({ name: value("f-sampler-name"), seed: number(value("f-sampler-seed")), grid_points: number(value("f-sampler-grid_points")) }),
    pruner: { name: value("f-pruner-name") },
    cv: prune({ folds: number(value("f-cv-folds")), repeats: number(value("f-cv-repeats")), strategy: value("f-cv-strategy") || undefined }),
    training: prune({
      max_epochs: number(value("f-training-max_epochs")),
      patience: number(value("f-training-patience")),
      metric: value("f-training-metric") || undefined,
    }),
    budget: prune({ n_trials: number(value("f-budget-n_trials")), timeout_s: number(value("f-budget-timeout_s")) }),
    final_model: prune({
      kind: value("f-final_model-kind"),
      seeds: value("f-final_model-kind") === "refit" ? number(value("f-final_model-seeds")) : undefined,
    }),
  });
}

// ---- Spec -> YAML (what the editor starts from) ----------------------------------------------
const YAML_WORDS = /^(true|false|yes|no|on|off|y|n|null|~)$/i;

function yamlScalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "boolean") return String(v);
  if (typeof v === "number") {
    const s = String(v);
    return /e/i.test(s) && !s.includes(".") ? s.replace(/e/i, ".0e") : s; // PyYAML reads 1e-4 as text
  }
  const s = String(v);
  return /^[A-Za-z_][A-Za-z0-9_./-]*$/.test(s) && !YAML_WORDS.test(s) ? s : JSON.stringify(s);
}

function isScalar(v) {
  return v === null || typeof v !== "object";
}

export function toYaml(value, indent = "") {
  const lines = [];
  for (const [key, v] of Object.entries(value)) {
    if (Array.isArray(v) && v.every(isScalar)) {
      lines.push(`${indent}${key}: [${v.map(yamlScalar).join(", ")}]`);
    } else if (Array.isArray(v)) {
      lines.push(`${indent}${key}:`);
      for (const item of v) {
        const nested = toYaml(item, `${indent}    `).split("\n");
        lines.push(`${indent}  - ${nested[0].trimStart()}`, ...nested.slice(1));
      }
    } else if (!isScalar(v)) {
      if (!Object.keys(v).length) lines.push(`${indent}${key}: {}`);
      else lines.push(`${indent}${key}:`, toYaml(v, `${indent}  `));
    } else {
      lines.push(`${indent}${key}: ${yamlScalar(v)}`);
    }
  }
  return lines.join("\n");
}

// ---- Errors next to their fields -------------------------------------------------------------
function visible(node) {
  return node.offsetParent !== null || node.tagName === "FIELDSET";
}

function clearErrors(root) {
  for (const slot of root.querySelectorAll(".field-error")) slot.replaceChildren();
  for (const node of root.querySelectorAll(".has-error")) node.classList.remove("has-error");
}

/** Put each {field, message} next to the deepest visible element whose `attr` names that
 * field or one of its parents; return the ones no element claims. */
function placeErrors(root, detail, attr) {
  const nodes = [...root.querySelectorAll(`[${attr}]`)].filter(visible);
  const unplaced = [];
  for (const item of detail) {
    const field = item.field || "";
    let target = null;
    for (const node of nodes) {
      const path = node.getAttribute(attr);
      const matches = field === path || field.startsWith(`${path}.`);
      if (matches && (!target || path.length > target.getAttribute(attr).length)) target = node;
    }
    const slot = target && (target.querySelector(":scope > .field-error") || root.querySelector(`[data-error-for="${target.getAttribute(attr)}"]`));
    if (!slot) {
      unplaced.push(item);
      continue;
    }
    target.classList.add("has-error");
    slot.append(el("div", {}, field ? `${field}: ${item.message}` : item.message));
  }
  return unplaced;
}

function showFormErrors(detail) {
  const form = $("spec-form");
  clearErrors(form);
  const unplaced = placeErrors(form, detail, "data-field");
  const items = unplaced.map((d) => el("li", {}, d.field ? `${d.field}: ${d.message}` : d.message));
  $("form-errors").replaceChildren(...(items.length
    ? [el("div", {}, "The spec was refused:"), el("ul", { class: "errors-list" }, ...items)]
    : []));
  const first = form.querySelector(".has-error, #form-errors:not(:empty)");
  if (first) {
    first.scrollIntoView({ block: "center" });
    const input = first.querySelector("input, select");
    if (input) input.focus({ preventScroll: true });
  }
}

// ---- Submitting ---------------------------------------------------------------------------------
async function submit(body, contentType, status, onErrors) {
  status.textContent = "Submitting…";
  try {
    const study = await api(`${API}/studies`, { method: "POST", headers: { "Content-Type": contentType, Accept: "application/json" }, body });
    status.textContent = "Study created; opening it…";
    location.assign(`/studies/${encodeURIComponent(study.id)}`);
  } catch (err) {
    status.textContent = "";
    onErrors(err instanceof ApiError ? err.detail : [{ field: null, message: String(err) }]);
  }
}

function submitForm(event) {
  event.preventDefault();
  const button = $("submit");
  button.disabled = true;
  submit(JSON.stringify(buildSpec()), "application/json", $("submit-status"), showFormErrors)
    .finally(() => (button.disabled = false));
}

function submitYaml() {
  const list = $("yaml-errors");
  list.replaceChildren();
  const button = $("yaml-submit");
  button.disabled = true;
  submit($("yaml").value, "application/yaml", $("yaml-status"), (detail) => {
    list.replaceChildren(...detail.map((d) => el("li", {}, d.field ? `${d.field}: ${d.message}` : d.message)));
  }).finally(() => (button.disabled = false));
}

// ---- Datasets ----------------------------------------------------------------------------------
const uploaded = new Map(); // dataset id -> the API's dataset (its summary says the columns' roles)

// A series' column roles in words: "target sales · inputs: sales, temp · time: year (orders the rows) · dropped: note".
function columnRoles(dataset) {
  const s = (dataset && dataset.summary) || {};
  if (dataset?.task !== "forecasting" || !s.target) return "";
  const parts = [`target ${s.target}`, `inputs: ${(s.columns || []).join(", ")}`];
  if (s.time_column) parts.push(`time: ${s.time_column} (orders the rows, not an input)`);
  const dropped = (s.dropped_columns || []).filter((c) => c !== s.time_column);
  if (dropped.length) parts.push(`dropped: ${dropped.join(", ")}`);
  return parts.join(" · ");
}

function showRoles() {
  $("dataset-roles").textContent = columnRoles(uploaded.get(value("f-dataset-id")));
}

async function loadDatasets(selectId) {
  const select = $("f-dataset-id");
  try {
    const page = await api(`${API}/datasets?limit=100`);
    uploaded.clear();
    for (const d of page.items) uploaded.set(d.id, d);
    const options = page.items.map((d) => el("option", { value: d.id }, `${d.name} · ${d.task} · ${d.id}`));
    select.replaceChildren(...(options.length ? options : [el("option", { value: "" }, "none uploaded yet: upload one below")]));
    if (selectId) select.value = selectId;
  } catch (err) {
    select.replaceChildren(el("option", { value: "" }, `could not list datasets (${err.message})`));
  }
  showRoles();
}

function setSource(source) {
  $(`f-dataset-source-${source}`).checked = true;
  $("builtin-field").classList.toggle("hidden", source !== "builtin");
  $("uploaded-field").classList.toggle("hidden", source !== "uploaded");
}

async function upload() {
  const box = $("upload");
  clearErrors(box);
  $("u-errors").replaceChildren();
  const file = $("u-file").files[0];
  if (!file) {
    placeErrors(box, [{ field: "file", message: "choose a file first" }], "data-upload-field");
    return;
  }
  const form = new FormData();
  form.append("file", file);
  form.append("task", value("u-task"));
  const fields = [["format", "u-format"], ["target_column", "u-target"], ["time_column", "u-time"],
    ["feature_columns", "u-features"], ["text_column", "u-text"], ["label_column", "u-label"]];
  for (const [name, id] of fields) {
    if (value(id).trim()) form.append(name, value(id).trim());
  }
  const status = $("u-status");
  status.textContent = `Uploading ${file.name}…`;
  $("u-submit").disabled = true;
  try {
    const dataset = await api(`${API}/datasets`, { method: "POST", body: form });
    const roles = columnRoles(dataset);
    status.textContent = `Uploaded ${dataset.name} as ${dataset.id}; selected above.${roles ? ` Columns: ${roles}.` : ""}`;
    await loadDatasets(dataset.id);
    setSource("uploaded");
    $("f-task").value = dataset.task;
    syncMetrics();
  } catch (err) {
    status.textContent = "";
    const detail = err instanceof ApiError ? err.detail : [{ field: null, message: String(err) }];
    const unplaced = placeErrors(box, detail, "data-upload-field");
    $("u-errors").replaceChildren(...unplaced.map((d) => el("div", {}, d.field ? `${d.field}: ${d.message}` : d.message)));
  } finally {
    $("u-submit").disabled = false;
  }
}

// ---- Wiring -------------------------------------------------------------------------------------
function syncMetrics() {
  const select = $("f-training-metric");
  const current = select.value;
  const metrics = METRICS[value("f-task")] || [];
  select.replaceChildren(el("option", { value: "" }, `default (${metrics[0]})`), ...metrics.map((m) => el("option", { value: m }, m)));
  if (metrics.includes(current)) select.value = current;
  $("u-task").value = value("f-task");
}

let yamlEdited = false;
function showTab(tab) {
  const yaml = tab === "yaml";
  $("tab-form").setAttribute("aria-selected", String(!yaml));
  $("tab-yaml").setAttribute("aria-selected", String(yaml));
  $("spec-form").classList.toggle("hidden", yaml);
  $("yaml-panel").classList.toggle("hidden", !yaml);
  if (yaml && !yamlEdited) $("yaml").value = `${toYaml(buildSpec())}\n`;
}

function init() {
  markNav();
  $("params").replaceChildren(...PARAMS.filter((p) => !p.optional).map(paramRow));
  $("params-optional").replaceChildren(...PARAMS.filter((p) => p.optional).map(paramRow));
  syncMetrics();
  $("f-task").addEventListener("change", syncMetrics);
  $("f-dataset-builtin").addEventListener("change", () => {
    $("f-task").value = BUILTIN_TASKS[value("f-dataset-builtin")];
    syncMetrics();
  });
  for (const radio of document.querySelectorAll('input[name="dataset-source"]')) {
    radio.addEventListener("change", () => setSource(radio.value));
  }
  $("spec-form").addEventListener("submit", submitForm);
  $("u-submit").addEventListener("click", upload);
  $("f-dataset-id").addEventListener("change", showRoles);
  $("tab-form").addEventListener("click", () => showTab("form"));
  $("tab-yaml").addEventListener("click", () => showTab("yaml"));
  $("yaml").addEventListener("input", () => (yamlEdited = true));
  $("yaml-reset").addEventListener("click", () => {
    yamlEdited = false;
    showTab("yaml");
  });
  $("yaml-submit").addEventListener("click", submitYaml);
  loadDatasets();
}

init();
