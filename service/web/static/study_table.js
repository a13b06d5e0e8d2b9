// The study page's trial table: sorted, filtered and paged on the server; a click on a row
// selects its trial.
import { api, badge, el, fmtDuration, fmtTime, fmtValue } from "./common.js";

const PAGE_SIZE = 25;

function cell(trial, column) {
  if (column.key.startsWith("param:")) return fmtValue(trial.params[column.key.slice(6)], 4);
  switch (column.key) {
    case "number": return String(trial.number);
    case "state": return badge(trial.state);
    case "value":
      // A pruned trial has no CV score; the score of the last epoch it reported says where it stopped.
      return trial.state === "pruned" && trial.value === null && trial.last_value !== null && trial.last_value !== undefined
        ? el("span", { class: "last-value", title: "pruned: the score it reported for its last epoch (an inner-validation score, not a CV score)" }, fmtValue(trial.last_value))
        : fmtValue(trial.value);
    case "fold_std": return fmtValue(trial.fold_std, 2);
    case "last_step": return trial.last_step === null ? "—" : String(trial.last_step + 1);
    case "duration_s": return trial.state === "running" ? "running" : fmtDuration(trial.duration_s);
    case "started_at": return fmtTime(trial.started_at);
    default: return "";
  }
}

export class TrialTable {
  /**
   * @param {object} options
   * @param {string} options.url the study's trials resource (`/api/v1/studies/{id}/trials`)
   * @param {HTMLTableElement} options.table
   * @param {HTMLElement} options.empty says why there are no rows
   * @param {HTMLElement} options.pager
   * @param {() => {study: object, space: object[], selected: object|null}} options.context
   * @param {(number: number) => void} options.onSelect
   */
  constructor({ url, table, empty, pager, context, onSelect }) {
    Object.assign(this, { url, table, empty, pager, context, onSelect });
    this.offset = 0;
    this.sort = "-number"; // the latest first: new trials appear on top
    this.state = "";
    this.request = 0;
  }

  /** The columns; `sorts`: a sortable column's first and second click (the score starts from
   * the best, ranked as `/best` ranks trials, then the worst first). */
  columns() {
    const { study, space } = this.context();
    const params = space.filter((p) => p.fixed === null).map((p) => ({ key: `param:${p.name}`, label: p.name, num: true }));
    const worstFirst = study.direction === "maximize" ? "value" : "-value";
    return [
      { key: "number", label: "#", num: true, sorts: ["number", "-number"] },
      { key: "state", label: "State" },
      { key: "value", label: study.metric, num: true, sorts: ["best", worstFirst] },
      ...params,
      { key: "fold_std", label: "Fold std", num: true },
      { key: "last_step", label: "Epochs", num: true },
      { key: "duration_s", label: "Duration", num: true, sorts: ["duration_s", "-duration_s"] },
      { key: "started_at", label: "Started", sorts: ["started_at", "-started_at"] },
    ];
  }

  /** How a sort orders its column, as `aria-sort` says it. */
  order(sort) {
    if (sort === "best") return this.context().study.direction === "maximize" ? "descending" : "ascending";
    return sort.startsWith("-") ? "descending" : "ascending";
  }

  renderHead() {
    const row = el("tr", {}, ...this.columns().map((c) => {
      const th = el("th", { class: [c.num ? "num" : "", c.sorts ? "sortable" : ""].join(" ").trim() || null }, c.label);
      if (c.sorts) {
        th.setAttribute("aria-sort", c.sorts.includes(this.sort) ? this.order(this.sort) : "none");
        th.title = "sort";
        th.addEventListener("click", () => {
          this.sort = this.sort === c.sorts[0] ? c.sorts[1] : c.sorts[0];
          this.offset = 0;
          this.renderHead();
          this.load();
        });
      }
      return th;
    }));
    this.table.tHead.replaceChildren(row);
  }

  filter(state) {
    this.state = state;
    this.offset = 0;
    return this.load();
  }

  markSelected(number) {
    for (const row of this.table.tBodies[0].rows) {
      row.classList.toggle("selected", number !== null && Number(row.dataset.number) === number);
    }
  }

  /** The current page's request (sent now; `load` draws its answer). */
  fetch() {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(this.offset), sort: this.sort });
    if (this.state) q.set("state", this.state);
    return api(`${this.url}?${q}`);
  }

  /** Draw the current page: `answer`, a `fetch()` sent earlier, or a new request. */
  async load(answer = this.fetch()) {
    const request = ++this.request;
    let data;
    try {
      data = await answer;
    } catch (err) {
      this.empty.textContent = `Could not load the trials: ${err.message}`;
      this.empty.classList.remove("hidden");
      return;
    }
    if (request !== this.request) return; // a newer request is on its way
    const columns = this.columns();
    const selected = this.context().selected;
    const rows = data.items.map((trial) => el("tr", {
      class: ["clickable", selected && selected.number === trial.number ? "selected" : ""].join(" ").trim(),
      "data-number": trial.number,
      onclick: () => this.onSelect(trial.number),
    }, ...columns.map((c) => el("td", { class: c.num ? "num" : null }, cell(trial, c)))));
    this.table.tBodies[0].replaceChildren(...rows);
    this.table.dataset.rows = String(rows.length);
    if (data.total === 0) {
      this.empty.textContent = this.state ? `No ${this.state} trials.` : "No trials yet: a worker picks the study up within seconds.";
      this.empty.classList.remove("hidden");
    } else {
      this.empty.classList.add("hidden");
    }
    this.renderPager(data);
  }

  renderPager(data) {
    this.pager.replaceChildren();
    if (data.total <= data.limit) return;
    const first = data.offset + 1;
    const last = Math.min(data.offset + data.limit, data.total);
    const go = (offset) => () => {
      this.offset = Math.max(0, offset);
      this.load();
    };
    this.pager.append(
      el("span", {}, `${first}–${last} of ${data.total}`),
      el("button", { type: "button", class: "small", disabled: data.offset === 0, onclick: go(0) }, "« First"),
      el("button", { type: "button", class: "small", disabled: data.offset === 0, onclick: go(data.offset - data.limit) }, "‹ Prev"),
      el("button", { type: "button", class: "small", disabled: last >= data.total, onclick: go(data.offset + data.limit) }, "Next ›"),
    );
  }
}
