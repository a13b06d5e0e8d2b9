// The study page's plots: drawing them, and their Plotly traces and layouts, built from the
// compact arrays the API sends.
import { el } from "./common.js";

const plotConfig = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

// Plotly loads as a classic deferred script; wait for it.
const plotlyReady = new Promise((resolve) => {
  const check = () => (window.Plotly ? resolve(window.Plotly) : setTimeout(check, 20));
  check();
});

export function placeholder(id, text) {
  const node = document.getElementById(id);
  if (window.Plotly && node.classList.contains("js-plotly-plot")) window.Plotly.purge(node);
  node.replaceChildren(el("div", { class: "placeholder" }, text));
  node.dataset.points = "0";
}

export async function plot(id, traces, layout) {
  const Plotly = await plotlyReady;
  const node = document.getElementById(id);
  if (!node.classList.contains("js-plotly-plot")) node.replaceChildren();
  await Plotly.react(node, traces, plotLayout(layout), plotConfig);
  return node;
}

export function webglAvailable() {
  try {
    const canvas = document.createElement("canvas");
    return Boolean(canvas.getContext("webgl") || canvas.getContext("experimental-webgl"));
  } catch {
    return false;
  }
}

const COLORS = {
  value: "#2457c5",
  best: "#1f8a4c",
  selected: "#e67e22",
  complete: "#5b7fd0",
  pruned: "#d08a1c",
  running: "#7f8fa6",
  failed: "#c0392b",
  waiting: "#9aa4b2",
};

/** The page's layout defaults, merged with `layout` (one level deep). */
export function plotLayout(layout = {}) {
  const axis = { gridcolor: "#eef1f5", zeroline: false, automargin: true };
  return {
    margin: { l: 56, r: 14, t: 10, b: 44 },
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1d2430" },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    hovermode: "closest",
    showlegend: true,
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: { size: 11 } },
    ...layout,
    xaxis: { ...axis, ...(layout.xaxis || {}) },
    yaxis: { ...axis, ...(layout.yaxis || {}) },
  };
}

/** Each complete trial's value by trial number, the best so far as a step line, the selected
 * trial circled, and (given `pruned`) each pruned trial's last reported score as a cross. */
export function historyTraces(complete, direction, selected, pruned = null) {
  const order = complete.number.map((_, i) => i).sort((a, b) => complete.number[a] - complete.number[b]);
  const x = order.map((i) => complete.number[i]);
  const y = order.map((i) => complete.value[i]);
  const better = direction === "maximize" ? (a, b) => a > b : (a, b) => a < b;
  const bestX = [];
  const bestY = [];
  let best = null;
  x.forEach((number, i) => {
    if (y[i] === null) return;
    if (best === null || better(y[i], best)) best = y[i];
    bestX.push(number);
    bestY.push(best);
  });
  const many = x.length > 1500;
  const traces = [
    {
      type: "scatter", mode: "markers", name: "trial value", x, y, customdata: x,
      marker: { color: COLORS.value, size: many ? 4 : 7, opacity: many ? 0.45 : 0.8 },
      hovertemplate: "trial #%{x}<br>%{y:.4g}<extra></extra>",
    },
    {
      type: "scatter", mode: "lines", name: "best so far", x: bestX, y: bestY,
      line: { color: COLORS.best, width: 2.5, shape: "hv" }, hoverinfo: "skip",
    },
  ];
  if (pruned && pruned.number.length) {
    traces.push({
      type: "scatter", mode: "markers", name: "pruned (last epoch's score)", x: pruned.number, y: pruned.value,
      customdata: pruned.number,
      marker: { color: COLORS.pruned, symbol: "x", size: many ? 4 : 7, opacity: many ? 0.45 : 0.8 },
      hovertemplate: "trial #%{x} (pruned)<br>last epoch: %{y:.4g}<extra></extra>",
    });
  }
  if (selected && selected.value !== null && selected.state === "complete") {
    traces.push({
      type: "scatter", mode: "markers", name: `trial #${selected.number}`, x: [selected.number], y: [selected.value],
      marker: { color: "rgba(0,0,0,0)", size: 15, line: { color: COLORS.selected, width: 3 } }, hoverinfo: "skip",
    });
  }
  return traces;
}

/** One line per trial; pruned trials end in a cross where they were stopped. */
export function curveTraces(curves, bestNumber, selectedNumber) {
  const shownInLegend = new Set();
  return curves.map((c) => {
    const role = c.number === selectedNumber ? "selected" : c.number === bestNumber ? "best" : c.state;
    const color = COLORS[role] || COLORS.complete;
    const legend = { selected: "selected trial", best: "best trial" }[role] || c.state;
    const emphasis = role === "best" || role === "selected";
    const dash = { pruned: "dot", running: "dash", failed: "dashdot", waiting: "dash" }[c.state] || "solid";
    const endSymbol = c.state === "pruned" ? "x" : c.state === "running" ? "circle-open" : "circle";
    const trace = {
      type: "scatter",
      mode: "lines+markers",
      x: c.steps.map((step) => step + 1),
      y: c.values,
      name: legend,
      legendgroup: legend,
      showlegend: !shownInLegend.has(legend),
      customdata: c.steps.map(() => c.number),
      line: { color, width: emphasis ? 3 : 1.5, dash },
      opacity: emphasis ? 1 : 0.75,
      marker: {
        color,
        // only the last point gets a marker: it shows where the trial stopped
        size: c.steps.map((_, i) => (i === c.steps.length - 1 ? (c.state === "pruned" ? 10 : 6) : 0)),
        symbol: endSymbol,
        line: { color, width: 2 },
      },
      hovertemplate: `trial #${c.number} (${c.state})<br>%{x}: %{y:.4g}<extra></extra>`,
    };
    shownInLegend.add(legend);
    return trace;
  });
}

export function importanceTraces(importances) {
  const entries = Object.entries(importances).sort((a, b) => a[1] - b[1]);
  return [{
    type: "bar",
    orientation: "h",
    x: entries.map((e) => e[1]),
    y: entries.map((e) => e[0]),
    text: entries.map((e) => `${(100 * e[1]).toFixed(1)}%`),
    textposition: "outside",
    cliponaxis: false,
    marker: { color: COLORS.value },
    hovertemplate: "%{y}: %{x:.3f}<extra></extra>",
    showlegend: false,
  }];
}

/** log10 positions of round values (1, 2, 5 x 10^k) within [low, high]; decades only when
 * that would crowd the axis. */
function logTicks(low, high) {
  const round = [];
  for (let e = Math.floor(Math.log10(low)); e <= Math.ceil(Math.log10(high)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= low * (1 - 1e-9) && v <= high * (1 + 1e-9)) round.push(v);
    }
  }
  const decades = round.filter((v) => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9);
  const ticks = round.length > 7 && decades.length >= 2 ? decades : round;
  return (ticks.length >= 2 ? ticks : [low, high]).map(Math.log10);
}

function tickLabel(v) {
  const x = 10 ** v;
  return x >= 1e4 || x < 1e-2 ? x.toExponential(0) : String(Number(x.toPrecision(3)));
}

/** Parallel coordinates over the searched parameters (log ones on a log axis, choices by
 * position) and the score, each line coloured by its score. */
export function parallelTrace(complete, space, study, narrow = false) {
  const dimensions = [];
  for (const p of space) {
    if (p.fixed !== null) continue;
    const raw = complete.params[p.name] || [];
    if (p.kind === "categorical" || p.choices) {
      const choices = p.choices || [...new Set(raw)];
      const keys = choices.map((c) => JSON.stringify(c));
      dimensions.push({
        label: p.name,
        values: raw.map((v) => keys.indexOf(JSON.stringify(v))),
        range: [-0.2, Math.max(0.2, choices.length - 0.8)],
        tickvals: choices.map((_, i) => i),
        ticktext: choices.map(String),
      });
    } else if (p.log) {
      const ticks = logTicks(p.low, p.high);
      dimensions.push({
        label: p.name,
        values: raw.map((v) => (v > 0 ? Math.log10(v) : null)),
        range: [Math.log10(p.low), Math.log10(p.high)],
        tickvals: ticks,
        ticktext: ticks.map(tickLabel),
      });
    } else {
      dimensions.push({ label: p.name, values: raw, range: [p.low, p.high] });
    }
  }
  dimensions.push({ label: study.metric, values: complete.value });
  return {
    type: "parcoords",
    dimensions,
    line: {
      color: complete.value,
      colorscale: "Viridis",
      reversescale: study.direction === "minimize", // bright is good either way
      showscale: !narrow, // on a phone the axes need the room
      colorbar: { thickness: 10, len: 0.8 },
    },
    labelfont: { size: narrow ? 10 : 12 },
    labelangle: narrow ? -30 : 0, // six axes on a phone: tilted names do not overlap
    tickfont: { size: 10 },
  };
}

/** The best trial's score on each fold, beside the selected trial's. */
export function foldTraces(best, selected) {
  const traces = [];
  for (const [trial, color, label] of [[best, COLORS.best, "best"], [selected, COLORS.selected, "selected"]]) {
    if (!trial || !trial.fold_scores || !trial.fold_scores.length) continue;
    traces.push({
      type: "bar",
      name: `${label}: trial #${trial.number}`,
      x: trial.fold_scores.map((_, i) => `fold ${i + 1}`),
      y: trial.fold_scores,
      marker: { color },
      hovertemplate: `trial #${trial.number}<br>%{x}: %{y:.4g}<extra></extra>`,
    });
  }
  return traces;
}
