// Vitrine admin page, behaviour analytics (issue 12): pick a report, a date range and optionally a privacy
// epsilon; draws the report's chart as inline SVG, every table as HTML, a CSV download, and the privacy
// budget spent today. The admin session (with the CSRF header) authorizes the /v1/admin/analytics calls.
"use strict";

(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const PRESETS = {
    "funnel": { report: "funnel", by: "day" }, "funnel-category": { report: "funnel", by: "category" },
    "funnel-surface": { report: "funnel", by: "surface" }, "search": { report: "search" },
    "cohorts": { report: "cohorts" }, "rfm": { report: "rfm" }, "movers": { report: "movers" },
  };

  function make(node, attrs, text) {
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const el = (tag, attrs, text) => make(document.createElement(tag), attrs, text);
  const svgEl = (tag, attrs, text) => make(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, text);

  async function get(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
    if (!r.ok) {
      const data = await r.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || `HTTP ${r.status}`);
    }
    return r;
  }

  function query(extra) {
    const preset = PRESETS[document.getElementById("analytics-report").value];
    const p = new URLSearchParams();
    for (const id of ["from", "to", "dp_epsilon"]) {
      const v = document.getElementById(`analytics-${id}`).value.trim();
      if (v) p.set(id, v);
    }
    if (preset.by) p.set("by", preset.by);
    for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
    return `/v1/admin/analytics/${preset.report}?${p}`;
  }

  function rowsOf(table) {
    return table.rows.map((r) => Object.fromEntries(table.columns.map((c, i) => [c, r[i]])));
  }

  function bars(rows, x, ys) {  // grouped vertical bars
    const W = 640, H = 200, pad = 30;
    const max = Math.max(1, ...rows.flatMap((r) => ys.map((y) => Number(r[y]) || 0)));
    const group = (W - pad) / Math.max(rows.length, 1), bw = Math.max(1, group / (ys.length + 1));
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: "100%", class: "bars" });
    rows.forEach((r, i) => ys.forEach((y, k) => {
      const v = Number(r[y]) || 0, h = (v / max) * (H - 10);
      const rect = svgEl("rect", { x: pad + i * group + k * bw, y: H - h, width: bw, height: h, class: `t${k}` });
      rect.append(svgEl("title", {}, `${r[x]} ${y}: ${v}`));
      svg.append(rect);
    }));
    svg.append(svgEl("text", { x: 0, y: 12, class: "axis" }, String(max)));
    if (rows.length) {
      svg.append(svgEl("text", { x: pad, y: H + 16, class: "axis" }, String(rows[0][x])));
      svg.append(svgEl("text", { x: W, y: H + 16, class: "axis", "text-anchor": "end" }, String(rows[rows.length - 1][x])));
    }
    return svg;
  }

  function hbars(rows, x, ys) {  // horizontal bars of the first series (and the second, thinner)
    rows = rows.slice(0, 20);
    const W = 640, row = 18, label = 240, H = rows.length * row + 4;
    const max = Math.max(1, ...rows.flatMap((r) => ys.map((y) => Number(r[y]) || 0)));
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${Math.max(H, 20)}`, width: "100%", class: "bars" });
    rows.forEach((r, i) => {
      svg.append(svgEl("text", { x: label - 6, y: i * row + 13, class: "axis", "text-anchor": "end" },
                       String(r[x]).slice(0, 40)));
      ys.forEach((y, k) => {
        const v = Number(r[y]) || 0;
        const rect = svgEl("rect", { x: label, y: i * row + 2 + k * 7, width: (v / max) * (W - label - 10),
                                     height: k ? 5 : 8, class: `t${k}` });
        rect.append(svgEl("title", {}, `${r[x]} ${y}: ${v}`));
        svg.append(rect);
      });
    });
    return svg;
  }

  function lines(rows, x, series, y) {  // one polyline per series (cohort), y in 0..1
    const W = 640, H = 200, pad = 30;
    const maxX = Math.max(1, ...rows.map((r) => Number(r[x]) || 0));
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: "100%", class: "bars" });
    const names = [...new Set(rows.map((r) => r[series]))];
    names.forEach((name, k) => {
      const pts = rows.filter((r) => r[series] === name && r[y] !== null)
        .map((r) => `${pad + (Number(r[x]) / maxX) * (W - pad - 10)},${H - Number(r[y]) * (H - 10)}`);
      if (!pts.length) return;
      const line = svgEl("polyline", { points: pts.join(" "), fill: "none", "stroke-width": 2, class: `line t${k % 6}` });
      line.append(svgEl("title", {}, `cohort ${name}`));
      svg.append(line);
    });
    svg.append(svgEl("text", { x: 0, y: 12, class: "axis" }, "100%"));
    svg.append(svgEl("text", { x: pad, y: H + 16, class: "axis" }, `week 0`));
    svg.append(svgEl("text", { x: W, y: H + 16, class: "axis", "text-anchor": "end" }, `week ${maxX}`));
    return svg;
  }

  function legend(names) {
    const ul = el("ul", { class: "legend" });
    names.forEach((n, k) => {
      const li = el("li");
      li.append(el("span", { class: `swatch t${k}` }), document.createTextNode(n));
      ul.append(li);
    });
    return ul;
  }

  function htmlTable(name, table) {
    const t = el("table", { class: "analytics-table", "data-table": name });
    t.append(el("caption", {}, name.replace(/_/g, " ")));
    const head = el("tr");
    table.columns.forEach((c) => head.append(el("th", { scope: "col" }, c)));
    const thead = el("thead");
    thead.append(head);
    t.append(thead);
    const body = el("tbody");
    table.rows.slice(0, 200).forEach((r) => {
      const tr = el("tr");
      r.forEach((v) => tr.append(el("td", {}, v === null ? "–" : String(v))));
      body.append(tr);
    });
    t.append(body);
    return t;
  }

  function draw(rep) {
    const chart = rep.chart, table = rep.tables[chart.table], rows = rowsOf(table);
    const box = document.getElementById("analytics-chart");
    let svg;
    if (chart.kind === "lines") svg = lines(rows, chart.x, chart.series, chart.y[0]);
    else if (chart.kind === "hbars") svg = hbars(rows, chart.x, chart.y);
    else svg = bars(rows, chart.x, chart.y);
    const names = chart.kind === "lines" ? [...new Set(rows.map((r) => r[chart.series]))].slice(0, 6) : chart.y;
    box.replaceChildren(svg, legend(names));
    box.dataset.rows = String(rows.length);
    const tables = document.getElementById("analytics-tables");
    tables.replaceChildren(...Object.entries(rep.tables).map(([n, t]) => htmlTable(n, t)));
    const dp = rep.dp;
    document.getElementById("analytics-dp").textContent = dp
      ? `Differentially private: epsilon ${dp.epsilon}, sensitivity ${dp.sensitivity} (${dp.clip}), Laplace noise of scale ${dp.noise_scale}.`
      : "Exact counts (no privacy noise).";
    document.getElementById("analytics-notes").textContent = rep.notes.join(" · ");
  }

  async function loadPrivacy() {
    try {
      const p = await (await get("/v1/admin/analytics/privacy")).json();
      document.getElementById("analytics-privacy").textContent =
        `Privacy budget today (${p.day}, UTC): ${p.spent} of ${p.daily_budget} epsilon spent, ${p.remaining} left, ${p.requests} private report(s).`;
    } catch (err) {
      document.getElementById("analytics-privacy").textContent = "privacy budget unavailable: " + err.message;
    }
  }

  async function load(ev) {
    if (ev) ev.preventDefault();
    const msg = document.getElementById("analytics-message");
    msg.textContent = "Loading…";
    try {
      draw(await (await get(query())).json());
      msg.textContent = "";
    } catch (err) {
      msg.textContent = "could not load the report: " + err.message;
    }
    loadPrivacy();
  }

  async function downloadCsv() {
    const msg = document.getElementById("analytics-message");
    try {
      const blob = await (await get(query({ format: "csv" }))).blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: `analytics-${document.getElementById("analytics-report").value}.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      msg.textContent = "";
    } catch (err) {
      msg.textContent = "could not export: " + err.message;
    }
    loadPrivacy();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("analytics-form");
    if (!form) return;
    form.addEventListener("submit", load);
    document.getElementById("analytics-csv").addEventListener("click", downloadCsv);
    load();
  });
})();
