// The study page's Model panel: the model the study serves, the best trial's fold ensemble
// (kept by the workers as trials complete) until a refit on all the study's data is ready
// (a worker trains it, once per seed; the study queues its own when it ends unless its spec
// says final_model: {kind: ensemble}); follow the refit, download either archive, see
// whether the model learned; cancel or delete.
import { API, FINISHED_STATES, api, badge, el, fmtAgo, fmtTime, fmtValue } from "./common.js";

const POLL_MS = 2000; // while a fit is queued or running; not at all otherwise
const ACTIVE = ["queued", "running"];
const MAX_HOLDOUT = 0.5;
const MAX_SEEDS = 10;
const WAIT_FOR_OWN_REFIT_POLLS = 5; // a completed study's own refit is queued by a worker within moments

/** Whether the model's state says a fit is still to come: the served state, or the refit's. */
function pending(s) {
  return ACTIVE.includes(s.state) || Boolean(s.refit && ACTIVE.includes(s.refit.state));
}

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
    this.refitOpen = false; // the ready model's "Refit on all data" section, kept open across renders
    this.finalKind = null; // the spec's final_model.kind, once the study's detail is known
    this.ownRefitPolls = 0; // polls left while a completed study's own refit is not queued yet
    // Kept across renders, so what was typed survives them.
    this.holdout = el("input", {
      type: "number", id: "model-holdout", min: 0, max: MAX_HOLDOUT, step: 0.05, value: 0, inputmode: "decimal",
    });
    this.seeds = el("input", { type: "number", id: "model-seeds", min: 1, max: MAX_SEEDS, step: 1, value: 1, inputmode: "numeric" });
  }

  /** The study changed: a new best trial may have brought its fold ensemble, and whether
   * (and why not) a refit can be asked for follows it. */
  setStudy(study) {
    const before = this.study;
    this.study = study;
    if (study.spec && study.spec.final_model) this.finalKind = study.spec.final_model.kind;
    const changed = !before || before.best_trial !== study.best_trial || before.state !== study.state;
    if (changed && study.state === "completed") this.ownRefitPolls = WAIT_FOR_OWN_REFIT_POLLS;
    if (changed && this.status && !pending(this.status)) this.load();
  }

  /** Read the model's state; poll again in a moment while a fit is queued or running. */
  async load() {
    clearTimeout(this.timer);
    this.timer = null;
    let again;
    try {
      this.status = await api(this.url);
      this.loadError = null;
      // A completed study that refits by itself: its refit shows up within moments of its end.
      const awaitingOwnRefit = this.finalKind === "refit" && !this.status.refit && this.ownRefitPolls > 0;
      if (awaitingOwnRefit) this.ownRefitPolls -= 1;
      again = pending(this.status) || awaitingOwnRefit;
    } catch (err) {
      this.loadError = `Could not read the model's state: ${err.message}`;
      if (err.status === 404) this.status = null; // the study is gone: nothing to follow
      again = err.status !== 404 && (!this.status || pending(this.status));
    }
    this.render();
    if (again) this.timer = setTimeout(() => this.load(), POLL_MS);
  }

  /** Why a fit cannot be asked for now, or null. */
  unavailable() {
    if (!this.study) return "Loading the study…";
    if (this.study.best_trial === null) {
      return "No complete trial yet: the model comes from the best trial (its fold models, or a refit of its parameters), so this waits for a trial to complete.";
    }
    return null;
  }

  async act(label, request) {
    this.busy = true;
    this.message.textContent = "";
    this.render();
    try {
      const status = await request();
      if (status) {
        this.status = status;
        this.render(); // what was asked for shows even when the fit ends before the next read
      }
    } catch (err) {
      this.message.textContent = `Could not ${label}: ${err.message}`;
    } finally {
      this.busy = false;
    }
    await this.load(); // the state as it is now, whatever the answer was
  }

  fit() {
    const holdout = this.holdout.value.trim() === "" ? 0 : Number(this.holdout.value);
    const seeds = this.seeds.value.trim() === "" ? 1 : Number(this.seeds.value);
    return this.act("refit the model", () => api(this.url, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "refit", holdout, seeds }),
    }));
  }

  remove(label, kind) {
    return this.act(label, () => api(`${this.url}?kind=${kind}`, { method: "DELETE" }).then(() => null));
  }

  fitControls(label) {
    const why = this.unavailable();
    const unfinished = this.study && !FINISHED_STATES.includes(this.study.state);
    return [
      el("div", { class: "actions model-actions" },
        el("label", { class: "model-holdout", for: "model-holdout", title: `Share of rows held out and scored each epoch (0 to ${MAX_HOLDOUT}); 0 trains on every row.` },
          "Holdout", this.holdout),
        el("label", { class: "model-holdout", for: "model-seeds", title: `Networks trained, one per seed, and averaged (1 to ${MAX_SEEDS}).` },
          "Seeds", this.seeds),
        el("button", { type: "button", class: "primary", id: "model-fit", disabled: Boolean(why) || this.busy, title: why, onclick: () => this.fit() },
          this.busy ? "Sending…" : label)),
      why ? el("div", { class: "hint", id: "model-why" }, why)
        : unfinished ? el("div", { class: "hint" }, `The study is still ${this.study.state}: this refits the best trial so far (#${this.study.best_trial}).`) : null,
    ];
  }

  source(s) {
    const metric = this.study ? this.study.metric : "score";
    return [["trial", `#${s.trial_number}`], ["CV " + metric, fmtValue(s.cv_score)], s.holdout ? ["holdout", fmtValue(s.holdout)] : null,
      s.seeds > 1 ? ["seeds", String(s.seeds)] : null];
  }

  /** A queued or running refit: what it is doing, and Cancel. */
  refitProgress(r, meanwhile) {
    const note = meanwhile ? el("span", { class: "hint", id: "model-meanwhile" }, "serving the fold ensemble meanwhile") : null;
    const cancel = el("button", { type: "button", class: "danger", id: "model-cancel", disabled: this.busy, onclick: () => this.remove("cancel the refit", "refit") }, "Cancel");
    if (r.state === "queued") {
      return [
        el("div", { class: "model-progress" }, el("span", { class: "spinner", "aria-hidden": "true" }),
          `Refit waiting for a worker… requested ${fmtAgo(r.requested_at)}${r.auto ? " (queued by the study as it ended)" : ""}`, note),
        kv(this.source(r)),
        el("div", { class: "actions" }, cancel),
      ];
    }
    const known = r.epochs !== null && r.epochs !== undefined;
    const pct = known ? Math.min(100, (100 * (r.epoch || 0)) / Math.max(1, r.epochs)) : 0;
    return [
      el("div", { class: "model-progress" }, el("span", { class: "spinner", "aria-hidden": "true" }),
        el("span", { id: "model-epochs" }, known ? `Refit training: epoch ${r.epoch || 0} / ${r.epochs}` : "Refit preparing the data…"),
        el("span", { class: "hint" }, `started ${fmtAgo(r.started_at)}`), note),
      known ? el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": r.epochs, "aria-valuenow": r.epoch || 0 },
        el("span", { class: "running", style: `width:${pct.toFixed(1)}%` })) : null,
      kv([...this.source(r),
        r.score !== null && r.score !== undefined ? [`last epoch (${r.holdout ? "holdout" : "training sample"})`, fmtValue(r.score)] : null]),
      el("div", { class: "actions" }, cancel, el("span", { class: "hint" }, "stops at the end of the epoch in progress")),
    ];
  }

  /** Download links: the model served, then the other kind stored, by name. */
  downloads(s) {
    const others = Object.keys(s.archives || {}).filter((kind) => kind !== s.kind);
    return [
      el("a", { class: "button primary", id: "model-download", href: s.links.download, download: "" }, "Download model"),
      ...others.map((kind) => el("a", { class: "button", id: `model-download-${kind}`, href: `${s.links.download}?kind=${kind}`, download: "" },
        kind === "ensemble" ? "Download the fold ensemble" : "Download the refit")),
    ];
  }

  render() {
    const s = this.status;
    const refit = s && s.refit ? s.refit : null;
    this.body.dataset.state = s ? s.state : "unknown";
    this.body.dataset.kind = s && s.state === "ready" ? s.kind : "none";
    this.body.dataset.refit = refit ? refit.state : "none";
    this.state.replaceChildren(s ? (s.state === "none" ? "not fitted" : badge(s.state)) : "");
    const error = this.loadError ? el("div", { class: "message", id: "model-load-error" }, this.loadError) : null;
    if (!s) {
      this.body.replaceChildren(error || el("div", { class: "placeholder" }, "Loading…"));
      return;
    }
    const views = {
      none: () => [
        el("p", { class: "note" }, "No model yet. As trials complete, the workers keep the best trial's fold models: their ensemble is served as soon as the study ends. Unless the spec says final_model: {kind: ensemble}, the study then refits its best trial on all its data (3 seeds by default), and serves that refit once it is ready. Or refit the best trial's parameters now (a worker trains it, once per seed); then download the model, or predict through the API."),
        ...this.fitControls("Refit on all data"),
      ],
      queued: () => this.refitProgress(s, false),
      running: () => this.refitProgress(s, false),
      ready: () => {
        const m = s.model || {};
        const training = m.training || {};
        const metric = m.metric || (this.study && this.study.metric) || "score";
        const holdoutScore = training[`holdout_${metric}`];
        const ensemble = s.kind === "ensemble";
        const learning = m.learning;
        const refitFailed = ensemble && refit && refit.state === "failed";
        const refitUnlearned = ensemble && refit && refit.state === "ready"; // served only when it learned
        return [
          s.learned === false && learning ? el("div", { class: "message", id: "model-not-learned" },
            `This model did not learn: on its own training data its ${learning.metric} is ${fmtValue(learning.score)}, ` +
            `${learning.metric === "accuracy" ? "no better than" : "no lower than"} ${fmtValue(learning.baseline)} for always answering the ${learning.baseline_name === "persistence" ? "last observed value" : learning.baseline_name}. ` +
            "Its predictions are not worth more than that; try a wider search space or more epochs.") : null,
          kv([
            ["serving", el("span", { id: "model-kind" }, ensemble ? `fold ensemble (${m.members ?? "?"} fold models, averaged)` : `refit on all data (${m.members ?? "?"} seed${m.members === 1 ? "" : "s"}, averaged)`),
              ensemble ? "The best trial's fold models as they were trained, each with its fold's preprocessing." : "The best trial's parameters trained again on all the data."],
            ["trial", `#${m.trial_number ?? s.trial_number}`],
            ["CV " + metric, fmtValue(m.cv_score ?? s.cv_score)],
            ensemble ? null : ["epochs", String(m.epochs ?? "—"), m.epochs_source],
            holdoutScore !== undefined ? [`holdout ${metric}`, `${fmtValue(holdoutScore)} (${training.holdout_samples} rows)`] : null,
            learning ? [`training ${learning.metric}`, `${fmtValue(learning.score)} (${learning.baseline_name}: ${fmtValue(learning.baseline)})`] : null,
            ["trained on", training.n_samples !== undefined ? `${training.n_samples} rows` : "—"],
            ["created", fmtTime(m.created_at || s.finished_at)],
            ["archive", fmtBytes(s.archive && s.archive.bytes), s.archive && s.archive.sha256 ? `sha256 ${s.archive.sha256}` : null],
          ]),
          ensemble && refit && ACTIVE.includes(refit.state) ? el("div", { id: "model-refit-status" }, ...this.refitProgress(refit, true)) : null,
          refitFailed ? el("div", { class: "message", id: "model-reason" }, `The refit failed: ${refit.reason || "no reason was recorded"}. The fold ensemble is served.`) : null,
          refitUnlearned ? el("div", { class: "message", id: "model-reason" }, "The refit is ready but did not learn (on its own training data it scored no better than the trivial answer), and the fold ensemble did: the ensemble is served. The refit can still be downloaded by name.") : null,
          el("div", { class: "actions" },
            ...this.downloads(s),
            el("button", { type: "button", class: "danger", id: "model-delete", disabled: this.busy, onclick: () => {
              const question = ensemble ? "Delete the fold ensemble? A later trial that ranks best keeps its fold models again."
                : "Delete this refit? The fold ensemble, if kept, is served again.";
              if (confirm(question)) this.remove("delete the model", s.kind);
            } }, ensemble ? "Delete model" : "Delete refit")),
          ensemble && refit && ACTIVE.includes(refit.state) ? null
            : el("details", { class: "model-refit", open: this.refitOpen || refitFailed, ontoggle: (event) => { this.refitOpen = event.target.open; } },
              el("summary", {}, "Refit on all data"), ...this.fitControls(refitFailed ? "Fit again" : ensemble ? "Refit" : "Refit again")),
        ];
      },
      failed: () => [
        el("div", { class: "message", id: "model-reason" }, `The refit failed: ${s.reason || "no reason was recorded"}`),
        kv([...this.source(s), ["attempts", String(s.attempts ?? "—")], ["finished", fmtTime(s.finished_at)]]),
        ...this.fitControls("Fit again"),
      ],
    };
    this.body.replaceChildren(...[error, ...(views[s.state] || views.none)()].filter(Boolean));
  }
}
