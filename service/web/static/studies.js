// The studies page: every study with its state, progress, best value, sampler, dataset and
// timing; filter by state; refreshed every few seconds while the tab is visible.
import { VIEWS, api, badge, el, fmtValue, markNav, progressBar, timingText } from "./common.js";

const REFRESH_MS = 3000;
const PAGE_SIZE = 50;
const params = new URLSearchParams(location.search);
const view = { state: params.get("state") || "", offset: Number(params.get("offset")) || 0, loaded: false };
const body = document.getElementById("studies-body");
const empty = document.getElementById("studies-empty");
const status = document.getElementById("status");
let timer = null;

function cell(label, attrs, ...content) {
  // One wrapper per cell: on a phone the label goes left and the wrapper right.
  return el("td", { "data-label": label, ...attrs }, el("div", { class: "cell" }, ...content));
}

function row(study) {
  const best = study.best_value === null ? "—" : fmtValue(study.best_value);
  return el(
    "tr",
    { "data-study-id": study.id },
    el("td", { class: "name" },
      el("a", { href: `/studies/${encodeURIComponent(study.id)}` }, study.name),
      el("div", { class: "sub" }, el("span", { class: "mono" }, study.id), " · ",
        el("a", { href: study.dashboard_url, title: "this study in optuna-dashboard" }, "dashboard"))),
    cell("State", {}, badge(study.state)),
    cell("Progress", { class: "progress-cell" }, progressBar(study)),
    cell("Best", { class: "num", title: study.best_trial !== null ? `trial #${study.best_trial}` : null },
      best, el("div", { class: "sub" }, `${study.metric} (${study.direction === "maximize" ? "max" : "min"})`)),
    cell("Sampler", {}, study.sampler, el("div", { class: "sub" }, `${study.cell} · ${study.pruner} pruner`)),
    cell("Dataset", {}, study.dataset || "—",
      el("div", { class: "sub" }, study.dataset_kind === "uploaded" && study.dataset_id ? `uploaded · ${study.dataset_id}` : study.dataset_kind)),
    cell("Timing", {}, timingText(study)),
  );
}

function renderPager(page) {
  const pager = document.getElementById("pager");
  pager.replaceChildren();
  if (page.total <= page.limit && page.offset === 0) return;
  const first = page.total ? page.offset + 1 : 0;
  const last = Math.min(page.offset + page.limit, page.total);
  const go = (offset) => () => { view.offset = Math.max(0, offset); syncAddress(); load(); };
  pager.append(
    el("span", {}, `${first}–${last} of ${page.total}`),
    el("button", { type: "button", class: "small", disabled: page.offset === 0, onclick: go(page.offset - page.limit) }, "‹ Newer"),
    el("button", { type: "button", class: "small", disabled: last >= page.total, onclick: go(page.offset + page.limit) }, "Older ›"),
  );
}

function syncAddress() {
  const q = new URLSearchParams();
  if (view.state) q.set("state", view.state);
  if (view.offset) q.set("offset", String(view.offset));
  history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
  for (const b of document.querySelectorAll("#state-filters button")) {
    b.setAttribute("aria-pressed", String(b.dataset.state === view.state));
  }
}

async function load() {
  clearTimeout(timer);
  const q = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(view.offset) });
  if (view.state) q.set("state", view.state);
  const asked = q.toString();
  try {
    const page = await api(`${VIEWS}/studies?${q}`);
    if (asked !== currentQuery()) return; // the filter changed while this was on its way
    body.replaceChildren(...page.items.map(row));
    view.loaded = true;
    if (page.items.length) {
      empty.classList.add("hidden");
    } else {
      empty.classList.remove("hidden");
      empty.replaceChildren(view.state
        ? `No ${view.state} studies.`
        : el("span", {}, "No studies yet. ", el("a", { href: "/new" }, "Create one"), " or submit one with ", el("code", {}, "hpo submit spec.yaml"), "."));
    }
    renderPager(page);
    status.classList.remove("error");
    status.textContent = "";
    document.getElementById("refreshed").textContent = `updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000}s`;
  } catch (err) {
    status.classList.add("error");
    status.textContent = `Could not load the studies: ${err.message}. Trying again…`;
    if (!view.loaded) empty.textContent = "Could not load the studies yet.";
  }
  timer = setTimeout(refreshWhenVisible, REFRESH_MS);
}

function currentQuery() {
  const q = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(view.offset) });
  if (view.state) q.set("state", view.state);
  return q.toString();
}

function refreshWhenVisible() {
  if (document.visibilityState === "visible") load();
  else timer = setTimeout(refreshWhenVisible, REFRESH_MS);
}

document.getElementById("state-filters").addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  view.state = button.dataset.state;
  view.offset = 0;
  syncAddress();
  empty.classList.remove("hidden");
  empty.textContent = "Loading studies…";
  body.replaceChildren();
  load();
});
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") load();
});

markNav();
syncAddress();
load();
