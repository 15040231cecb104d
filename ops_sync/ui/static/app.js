// The ops center dashboard: live fleet table (sort, filter, poll), charts (uPlot), copy buttons.
// No framework, no CDN: uPlot is vendored next to this file. Text goes in with textContent only.
"use strict";

(function () {
  const FLEET_EVERY_MS = 3000;
  const CHARTS_EVERY_MS = 15000;
  const COLOURS = ["#0b4fa8", "#c2410c", "#15803d", "#7c3aed"];

  async function getJSON(url) {
    const reply = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (reply.status === 401) { window.location.assign("/ui/signin"); throw new Error("signed out"); }
    if (!reply.ok) throw new Error(url + ": " + reply.status);
    return reply.json();
  }

  // -- copy buttons -------------------------------------------------------------------------
  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach((button) => {
      button.addEventListener("click", async () => {
        const text = document.getElementById(button.dataset.copy).textContent;
        const label = button.textContent;
        try {
          await navigator.clipboard.writeText(text);
        } catch (e) {
          const range = document.createRange();
          range.selectNodeContents(document.getElementById(button.dataset.copy));
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          document.execCommand("copy");
        }
        button.textContent = "Copied";
        setTimeout(() => { button.textContent = label; }, 1500);
      });
    });
  }

  // -- the fleet table ------------------------------------------------------------------------
  function fleet(table) {
    const state = { rows: null, key: "name", dir: 1, filter: "" };
    const filter = document.getElementById("fleet-filter");
    const updated = document.getElementById("fleet-updated");
    const columns = Array.from(table.querySelectorAll("th button[data-sort]")).map((b) => b.dataset.sort);

    function compare(a, b) {
      const x = a.sort[state.key], y = b.sort[state.key];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * state.dir;
    }

    function row(edge) {
      const tr = document.createElement("tr");
      tr.dataset.name = edge.name;
      for (const key of columns) {
        const td = document.createElement("td");
        td.dataset.col = key;
        if (key === "name") {
          const a = document.createElement("a");
          a.href = "/ui/edges/" + encodeURIComponent(edge.name);
          a.textContent = edge.cells.name;
          td.appendChild(a);
        } else {
          td.textContent = edge.cells[key];
        }
        tr.appendChild(td);
      }
      const actions = document.createElement("td");
      const remove = document.createElement("a");
      remove.href = "/ui/edges/" + encodeURIComponent(edge.name) + "/remove";
      remove.textContent = "Remove";
      actions.appendChild(remove);
      tr.appendChild(actions);
      return tr;
    }

    function render() {
      if (state.rows === null) return;
      const words = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
      const shown = state.rows
        .filter((e) => {
          const text = Object.values(e.cells).join(" ").toLowerCase();
          return words.every((w) => text.includes(w));
        })
        .sort(compare);
      const body = table.tBodies[0];
      body.replaceChildren(...shown.map(row));
      table.caption.textContent = "Enrolled edges (" + shown.length + " of " + state.rows.length + ")";
      const empty = document.getElementById("fleet-empty");
      if (empty) empty.hidden = state.rows.length > 0;
    }

    table.querySelectorAll("th button[data-sort]").forEach((button) => {
      button.addEventListener("click", () => {
        const key = button.dataset.sort;
        state.dir = state.key === key ? -state.dir : 1;
        state.key = key;
        table.querySelectorAll("th").forEach((th) => th.setAttribute("aria-sort", "none"));
        button.parentElement.setAttribute("aria-sort", state.dir > 0 ? "ascending" : "descending");
        render();
      });
    });
    filter.addEventListener("input", () => { state.filter = filter.value; render(); });

    async function poll() {
      try {
        const body = await getJSON(table.dataset.source);
        state.rows = body.edges;
        render();
        updated.textContent = "Updated " + new Date().toLocaleTimeString();
        table.dataset.updates = String(Number(table.dataset.updates || "0") + 1);
      } catch (e) {
        updated.textContent = "Not updated: " + e.message;
      }
    }
    poll();
    setInterval(poll, FLEET_EVERY_MS);
  }

  // -- charts ---------------------------------------------------------------------------------
  function draw(element, xs, series, options) {
    const points = series.reduce((n, s) => n + s.values.filter((v) => v !== null && v !== undefined).length, 0);
    element.dataset.points = String(points);
    const width = Math.max(200, element.clientWidth);
    const opts = Object.assign({
      width: width,
      height: 220,
      series: [{}].concat(series.map((s, i) => Object.assign({
        label: s.label, stroke: s.colour || COLOURS[i % COLOURS.length], width: 2,
        points: { show: true, size: 5 }, spanGaps: false,
      }, s.options || {}))),
      legend: { live: false },
    }, options || {});
    if (element._plot) element._plot.destroy();
    element.replaceChildren();
    const data = [xs].concat(series.map((s) => s.values));
    element._plot = new uPlot(opts, data, element);
    element.setAttribute("aria-label", element.dataset.title + ": " + points + " points" +
      (xs.length ? ", latest " + series.map((s) => s.label + " " + s.values[s.values.length - 1]).join(", ") : ", no data"));
  }

  const LABELS = {
    inferences: "inferences", anomaly_rate: "anomaly rate", p50_ms: "p50 ms", p99_ms: "p99 ms",
    sync_lag_s: "sync lag s",
  };

  async function edgeCharts(plots) {
    const url = plots[0].dataset.url;
    async function refresh() {
      let body;
      try { body = await getJSON(url); } catch (e) { return; }
      const note = document.getElementById("series-note");
      if (note) note.textContent = body.rows + " log rows in the last " + body.minutes + " minutes" + (body.truncated ? " (the oldest left out)" : "") + ".";
      plots.forEach((plot) => {
        const source = body[plot.dataset.source];
        plot.dataset.title = plot.parentElement.querySelector("figcaption").textContent;
        const fields = plot.dataset.fields.split(",");
        const range = { x: { time: true, range: [body.from, body.to] } };
        draw(plot, source.time, fields.map((f) => ({ label: LABELS[f] || f, values: source[f] })), { scales: range });
      });
    }
    await refresh();
    setInterval(refresh, CHARTS_EVERY_MS);
  }

  async function assayCharts(scores, bins) {
    const body = await getJSON(scores.dataset.url);
    const results = body.results.slice().reverse(); // oldest first
    const xs = results.map((r) => Date.parse(r.window_start) / 1000);
    const threshold = Number(scores.dataset.threshold);
    scores.dataset.title = "Score per window";
    draw(scores, xs, [
      { label: "score", values: results.map((r) => (r.score === undefined ? null : r.score)) },
      { label: "threshold", values: results.map(() => threshold), colour: "#b91c1c", options: { dash: [6, 4], points: { show: false } } },
    ]);
    const latest = body.results.find((r) => r.status !== "no rows") || body.results[0];
    if (!bins || !latest) return;
    const baseline = latest.baseline_aggregate || [];
    const windowed = latest.window_aggregate || [];
    const labels = latest.bin_labels || baseline.map((_, i) => String(i));
    const xs2 = baseline.map((_, i) => i);
    bins.dataset.title = "Bins of the latest window against the baseline";
    const bars = uPlot.paths && uPlot.paths.bars;
    draw(bins, xs2, [
      { label: "baseline", values: baseline, options: bars ? { paths: bars({ size: [0.4, 60], align: -1 }), fill: "#0b4fa8aa", points: { show: false } } : {} },
      { label: "window", values: windowed, options: bars ? { paths: bars({ size: [0.4, 60], align: 1 }), fill: "#c2410caa", points: { show: false } } : {} },
    ], {
      scales: { x: { time: false, range: [-0.5, Math.max(0.5, xs2.length - 0.5)] } },
      axes: [{ values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? labels[t] || "" : "")) }, {}],
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    copyButtons();
    const table = document.getElementById("fleet");
    if (table) fleet(table);
    const plots = Array.from(document.querySelectorAll(".plot[data-chart]"));
    if (plots.length) edgeCharts(plots);
    const scores = document.getElementById("assay-scores");
    if (scores) assayCharts(scores, document.getElementById("assay-bins"));
  });
})();
