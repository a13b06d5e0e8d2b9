// Shared by the pages: talking to the API, building elements, formatting numbers and times.

export const API = "/api/v1";
export const VIEWS = `${API}/views`;
export const FINISHED_STATES = ["completed", "failed", "cancelled"];

/** A refusal of the API: `status` and the server's [{field, message}] list. */
export class ApiError extends Error {
  constructor(status, detail) {
    const items = Array.isArray(detail) ? detail : [{ field: null, message: String(detail) }];
    super(items.map((d) => (d.field ? `${d.field}: ${d.message}` : d.message)).join("; "));
    this.status = status;
    this.detail = items;
  }
}

/** fetch() a JSON endpoint; throws ApiError for 4xx/5xx and for an unreachable server. */
export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, ...options });
  } catch (err) {
    throw new ApiError(0, [{ field: null, message: `the service did not answer (${err.message})` }]);
  }
  if (response.status === 401 && !path.startsWith("/login")) {
    // The service has API keys and this browser has not signed in (or its key was revoked).
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  if (response.status === 204) return null;
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.detail) || `HTTP ${response.status}`);
  }
  return body;
}

/** el("div", {class: "x", onclick: fn}, child, "text", ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function badge(state) {
  return el("span", { class: `badge ${state}` }, state);
}

/** Complete | pruned | running segments against the trial budget, and "12 / 50" under it. */
export function progressBar(study) {
  const t = study.trials;
  const budget = Math.max(1, study.n_trials);
  const pct = (n) => `${Math.min(100, (100 * n) / budget).toFixed(2)}%`;
  const finished = t.complete + t.pruned;
  const bar = el(
    "div",
    { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": study.n_trials, "aria-valuenow": finished },
    el("span", { class: "complete", style: `width:${pct(t.complete)}`, title: `${t.complete} complete` }),
    el("span", { class: "pruned", style: `width:${pct(t.pruned)}`, title: `${t.pruned} pruned` }),
    el("span", { class: "running", style: `width:${pct(t.running)}`, title: `${t.running} running` }),
  );
  const extra = [t.running ? `${t.running} running` : "", t.failed ? `${t.failed} failed` : ""].filter(Boolean).join(", ");
  const label = el("div", { class: "progress-label" }, `${finished} / ${study.n_trials} trials${extra ? ` · ${extra}` : ""}`);
  return el("div", {}, bar, label);
}

export function fmtValue(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return value.toPrecision(digits).replace(/\.?0+$/, "");
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)}s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function fmtAgo(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "—";
  if (seconds < 5) return "just now";
  return `${fmtDuration(seconds)} ago`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** "started 3m ago · ETA 5m" or "finished 2h ago" */
export function timingText(study) {
  if (FINISHED_STATES.includes(study.state)) {
    return study.finished_at ? `finished ${fmtAgo(study.finished_at)}` : study.state;
  }
  if (!study.started_at) return "waiting for a worker";
  const eta = study.eta_s !== null && study.eta_s !== undefined ? ` · ETA ${fmtDuration(study.eta_s)}` : "";
  return `started ${fmtAgo(study.started_at)}${eta}`;
}

/** Copy text to the clipboard (falls back to a hidden textarea where the API is absent). */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { style: "position:fixed;opacity:0" });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

/** A button that copies `getText()` and says so for a moment. */
export function copyButton(label, getText) {
  const button = el("button", { type: "button", class: "small" }, label);
  button.addEventListener("click", async () => {
    const ok = await copyText(getText());
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = label), 1500);
  });
  return button;
}

/** `fn` run at most once per `ms`: calls in between are folded into one, run at the end. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}

/** Marks the current page's link in the top bar. */
export function markNav() {
  for (const a of document.querySelectorAll(".topbar nav a")) {
    if (a.getAttribute("href") === location.pathname) a.setAttribute("aria-current", "page");
  }
}
