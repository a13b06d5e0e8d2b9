// The study page's Model panel: fit the best trial on all the study's data (a worker trains
// it), follow the fit, download the archive; cancel the fit or delete the model.
import { API, FINISHED_STATES, api, badge, el, fmtAgo, fmtTime, fmtValue } from "./common.js";

const POLL_MS = 2000; // while a fit is queued or running; not at all otherwise
const ACTIVE = ["queued", "running"];
const MAX_HOLDOUT = 0.5;

function fmtBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.filter(Boolean).flatMap(([key, value, title]) => [
    el("dt", {}, key), el("dd", { title: title || null }, value)]));
}

export class ModelPanel {
  /**
   * @param {object} options
   * @param {string} options.studyId
   * @param {HTMLElement} options.body where the panel draws the model's state and its buttons
   * @param {HTMLElement} options.state the card head's state badge
   * @param {HTMLElement} options.message says why an action was refused
   */
  constructor({ studyId, body, state, message }) {
    Object.assign(this, { body, state, message });
    this.url = `${API}/studies/${encodeURIComponent(studyId)}/model`;
    this.study = null;
    this.status = null; // GET .../model
    this.loadError = null;
    this.timer = null;
    this.busy = false; // a POST or DELETE is on its way
    // Kept across renders, so what was typed survives them.
    this.holdout = el("input", {
      type: "number", id: "model-holdout", min: 0, max: MAX_HOLDOUT, step: 0.05, value: 0, inputmode: "decimal",
    });
  }

  /** The study changed: whether (and why not) a fit can be asked for follows it. */
  setStudy(study) {
    const before = this.study;
    this.study = study;
    const changed = !before || before.best_trial !== study.best_trial || before.state !== study.state;
    if (changed && this.status && !ACTIVE.includes(this.status.state)) this.render();
  }

  /** Read the model's state; poll again in a moment while a fit is queued or running. */
  async load() {
    clearTimeout(this.timer);
    this.timer = null;
    let again;
    try {
      this.status = await api(this.url);
      this.loadError = null;
      again = ACTIVE.includes(this.status.state);
    } catch (err) {
      this.loadError = `Could not read the model's state: ${err.message}`;
      if (err.status === 404) this.status = null; // the study is gone: nothing to follow
      again = err.status !== 404 && (!this.status || ACTIVE.includes(this.status.state));
    }
    this.render();
    if (again) this.timer = setTimeout(() => this.load(), POLL_MS);
  }

  /** Why a fit cannot be asked for now, or null. */
  unavailable() {
    if (!this.study) return "Loading the study…";
    if (this.study.best_trial === null) {
      return "No complete trial yet: the model is fitted from the best trial's parameters, so this waits for a trial to complete.";
    }
    return null;
  }

  async act(label, request) {
    this.busy = true;
    this.message.textContent = "";
    this.render();
    try {
      const status = await request();
      if (status) this.status = status;
    } catch (err) {
      this.message.textContent = `Could not ${label}: ${err.message}`;
    } finally {
      this.busy = false;
    }
    await this.load(); // the state as it is now, whatever the answer was
  }

  fit() {
    const holdout = this.holdout.value.trim() === "" ? 0 : Number(this.holdout.value);
    return this.act("fit the model", () => api(this.url, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ holdout }),
    }));
  }

  remove(label) {
    return this.act(label, () => api(this.url, { method: "DELETE" }).then(() => null));
  }

  fitControls(label) {
    const why = this.unavailable();
    const unfinished = this.study && !FINISHED_STATES.includes(this.study.state);
    return [
      el("div", { class: "actions model-actions" },
        el("label", { class: "model-holdout", for: "model-holdout", title: `Share of rows held out and scored each epoch (0 to ${MAX_HOLDOUT}); 0 trains on every row.` },
          "Holdout", this.holdout),
        el("button", { type: "button", class: "primary", id: "model-fit", disabled: Boolean(why) || this.busy, title: why, onclick: () => this.fit() },
          this.busy ? "Sending…" : label)),
      why ? el("div", { class: "hint", id: "model-why" }, why)
        : unfinished ? el("div", { class: "hint" }, `The study is still ${this.study.state}: this fits the best trial so far (#${this.study.best_trial}).`) : null,
    ];
  }

  source(s) {
    const metric = this.study ? this.study.metric : "score";
    return [["trial", `#${s.trial_number}`], ["CV " + metric, fmtValue(s.cv_score)], s.holdout ? ["holdout", fmtValue(s.holdout)] : null];
  }

  render() {
    const s = this.status;
    this.body.dataset.state = s ? s.state : "unknown";
    this.state.replaceChildren(s ? (s.state === "none" ? "not fitted" : badge(s.state)) : "");
    const error = this.loadError ? el("div", { class: "message", id: "model-load-error" }, this.loadError) : null;
    if (!s) {
      this.body.replaceChildren(error || el("div", { class: "placeholder" }, "Loading…"));
      return;
    }
    const views = {
      none: () => [
        el("p", { class: "note" }, "Fit the best trial's parameters on all the study's data. A worker trains it; then download the model, or predict through the API."),
        ...this.fitControls("Fit model"),
      ],
      queued: () => [
        el("div", { class: "model-progress" }, el("span", { class: "spinner", "aria-hidden": "true" }),
          `Waiting for a worker… requested ${fmtAgo(s.requested_at)}`),
        kv(this.source(s)),
        el("div", { class: "actions" },
          el("button", { type: "button", class: "danger", id: "model-cancel", disabled: this.busy, onclick: () => this.remove("cancel the fit") }, "Cancel")),
      ],
      running: () => {
        const known = s.epochs !== null && s.epochs !== undefined;
        const pct = known ? Math.min(100, (100 * (s.epoch || 0)) / Math.max(1, s.epochs)) : 0;
        return [
          el("div", { class: "model-progress" }, el("span", { class: "spinner", "aria-hidden": "true" }),
            el("span", { id: "model-epochs" }, known ? `Training: epoch ${s.epoch || 0} / ${s.epochs}` : "Preparing the data…"),
            el("span", { class: "hint" }, `started ${fmtAgo(s.started_at)}`)),
          known ? el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": s.epochs, "aria-valuenow": s.epoch || 0 },
            el("span", { class: "running", style: `width:${pct.toFixed(1)}%` })) : null,
          kv([...this.source(s),
            s.score !== null && s.score !== undefined ? [`last epoch (${s.holdout ? "holdout" : "training sample"})`, fmtValue(s.score)] : null]),
          el("div", { class: "actions" },
            el("button", { type: "button", class: "danger", id: "model-cancel", disabled: this.busy, onclick: () => this.remove("cancel the fit") }, "Cancel"),
            el("span", { class: "hint" }, "stops at the end of the epoch in progress")),
        ];
      },
      ready: () => {
        const m = s.model || {};
        const training = m.training || {};
        const metric = m.metric || (this.study && this.study.metric) || "score";
        const holdoutScore = training[`holdout_${metric}`];
        return [
          kv([
            ["trial", `#${m.trial_number ?? s.trial_number}`],
            ["CV " + metric, fmtValue(m.cv_score ?? s.cv_score)],
            ["epochs", String(m.epochs ?? "—"), m.epochs_source],
            holdoutScore !== undefined ? [`holdout ${metric}`, `${fmtValue(holdoutScore)} (${training.holdout_samples} rows)`] : null,
            ["trained on", training.n_samples !== undefined ? `${training.n_samples} rows` : "—"],
            ["created", fmtTime(m.created_at || s.finished_at)],
            ["archive", fmtBytes(s.archive && s.archive.bytes), s.archive && s.archive.sha256 ? `sha256 ${s.archive.sha256}` : null],
          ]),
          el("div", { class: "actions" },
            el("a", { class: "button primary", id: "model-download", href: s.links.download, download: "" }, "Download model"),
            el("button", { type: "button", class: "danger", id: "model-delete", disabled: this.busy, onclick: () => {
              if (confirm("Delete this model? Its archive is removed; you can fit it again later.")) this.remove("delete the model");
            } }, "Delete model")),
          el("details", { class: "model-refit" }, el("summary", {}, "Fit again"), ...this.fitControls("Fit again")),
        ];
      },
      failed: () => [
        el("div", { class: "message", id: "model-reason" }, `The fit failed: ${s.reason || "no reason was recorded"}`),
        kv([...this.source(s), ["attempts", String(s.attempts ?? "—")], ["finished", fmtTime(s.finished_at)]]),
        ...this.fitControls("Fit again"),
      ],
    };
    this.body.replaceChildren(...[error, ...(views[s.state] || views.none)()].filter(Boolean));
  }
}
