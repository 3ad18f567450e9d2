// Vitrine admin page: rebuild with live progress, rollback, the events-per-day chart, the surfaces' rates and
// the experiments (per-variant rates with 95% intervals; start, stop, choose a winner).
// The session (logged in with the admin key) authorizes the /v1/admin calls, with the CSRF header.
"use strict";

(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const TYPES = ["view", "click", "add_to_cart", "remove_from_cart", "purchase", "search", "rating"];

  function make(node, attrs, text) {
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const el = (tag, attrs, text) => make(document.createElement(tag), attrs, text);
  const svgEl = (tag, attrs, text) => make(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, text);

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error((data.error && data.error.message) || `HTTP ${r.status}`);
    return data;
  }

  function say(text) {
    document.getElementById("admin-message").textContent = text;
  }

  // -- serving version and versions list, refreshed after a rebuild or rollback ---------------
  async function refreshServing() {
    const info = await api("GET", "/v1/admin/versions");
    const m = info.manifest || {};
    const set = (id, v) => { const n = document.getElementById(id); if (n) n.textContent = v; };
    set("current-version", info.current);
    set("manifest-items", m.counts ? m.counts.items : "");
    set("manifest-created", m.created_at || "");
    if (m.counts) set("manifest-embedded", `${m.counts.embedded} / ${m.counts.from_cache}`);
    const ol = document.getElementById("versions");
    ol.replaceChildren(...(info.on_disk || []).slice().reverse().map((v) => {
      const li = el("li", v === info.current ? { class: "current", "aria-current": "true" } : {}, v);
      if (v === info.current) { li.append(" "); li.append(el("strong", {}, "(serving)")); }
      return li;
    }));
    document.getElementById("rollback").disabled = (info.served || []).length < 2;
  }

  // -- rebuild: start the job, poll its state until it ends ------------------------------------
  async function rebuild() {
    const button = document.getElementById("rebuild");
    const box = document.getElementById("job");
    const bar = document.getElementById("job-progress");
    const status = document.getElementById("job-status");
    button.disabled = true;
    box.hidden = false;
    bar.value = 0;
    status.textContent = "starting…";
    try {
      const job = await api("POST", "/v1/admin/rebuild", { full: document.getElementById("rebuild-full").checked });
      box.dataset.job = job.job;
      for (;;) {
        await new Promise((r) => setTimeout(r, 400));
        const s = await api("GET", job.status_url);
        box.dataset.state = s.state;
        if (s.state === "succeeded") {
          bar.value = 1;
          status.textContent = `done: now serving ${s.version}`;
          break;
        }
        if (s.state === "failed") {
          status.textContent = `failed: ${s.error || "see the server log"}`;
          break;
        }
        const frac = s.total ? s.done / s.total : 0;
        bar.value = Math.max(0, Math.min(1, frac));
        status.textContent = `${s.state}${s.stage ? ": " + s.stage : ""}${s.total ? ` ${s.done}/${s.total}` : ""}`;
      }
      await refreshServing();
    } catch (e) {
      status.textContent = "could not rebuild: " + e.message;
      box.dataset.state = "failed";
    } finally {
      button.disabled = false;
    }
  }

  async function rollback() {
    const button = document.getElementById("rollback");
    button.disabled = true;
    try {
      const r = await api("POST", "/v1/admin/rollback");
      say(`rolled back: ${r.previous} → ${r.current}`);
      await refreshServing();
    } catch (e) {
      say("could not roll back: " + e.message);
      button.disabled = false;
    }
  }

  // -- events per day: stacked bars as inline SVG, and the same numbers as a table -------------
  function drawChart(rows) {
    const box = document.getElementById("events-chart");
    const tbody = document.querySelector("#events-table tbody");
    tbody.replaceChildren(...rows.map((r) => {
      const tr = el("tr");
      tr.append(el("td", {}, r.day), el("td", {}, r.type), el("td", {}, String(r.count)));
      return tr;
    }));
    if (!rows.length) { box.textContent = "No events yet."; return; }
    const days = [...new Set(rows.map((r) => r.day))].sort();
    const types = TYPES.filter((t) => rows.some((r) => r.type === t));
    const per = {};
    for (const r of rows) (per[r.day] = per[r.day] || {})[r.type] = r.count;
    const totals = days.map((d) => types.reduce((s, t) => s + ((per[d] || {})[t] || 0), 0));
    const max = Math.max(...totals, 1);
    const W = 640, H = 200, pad = 24, bw = Math.max(2, (W - pad) / days.length - 2);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H + 20}`, width: "100%", class: "bars" });
    days.forEach((d, i) => {
      let y = H;
      types.forEach((t, k) => {
        const v = (per[d] || {})[t] || 0;
        if (!v) return;
        const h = (v / max) * (H - 10);
        y -= h;
        const rect = svgEl("rect", { x: pad + i * (bw + 2), y, width: bw, height: h, class: `t${k}` });
        rect.append(svgEl("title", {}, `${d} ${t}: ${v}`));
        svg.append(rect);
      });
    });
    svg.append(svgEl("text", { x: 0, y: 12, class: "axis" }, String(max)));
    svg.append(svgEl("text", { x: pad, y: H + 16, class: "axis" }, days[0]));
    svg.append(svgEl("text", { x: W, y: H + 16, class: "axis", "text-anchor": "end" }, days[days.length - 1]));
    const legend = el("ul", { class: "legend" });
    types.forEach((t, k) => {
      const li = el("li");
      li.append(el("span", { class: `swatch t${k}` }), document.createTextNode(t));
      legend.append(li);
    });
    box.replaceChildren(svg, legend);
    box.dataset.days = String(days.length);
  }

  // -- surfaces: rates per surface, and CTR by position as <meter> bars (plain HTML, no styles) --
  const pct = (x) => `${(100 * x).toFixed(1)}%`;

  function drawSurfaces(surfaces) {
    const tbody = document.querySelector("#surfaces-table tbody");
    const phead = document.querySelector("#positions-table thead");
    const pbody = document.querySelector("#positions-table tbody");
    if (!surfaces.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: "7" }, "No lists logged yet."));
      tbody.replaceChildren(tr);
      phead.replaceChildren();
      pbody.replaceChildren();
      return;
    }
    tbody.replaceChildren(...surfaces.map((s) => {
      const tr = el("tr", { "data-surface": s.surface });
      tr.append(el("th", { scope: "row" }, s.surface), el("td", {}, String(s.lists)), el("td", {}, String(s.shown)),
                el("td", { title: `${s.clicks} clicked` }, pct(s.ctr)),
                el("td", { title: `${s.add_to_cart} added to cart` }, pct(s.add_to_cart_rate)),
                el("td", { title: `${s.purchases} bought` }, pct(s.conversion)),
                el("td", { title: `${s.explored} of ${s.shown} shown items placed by exploration, in ${s.explored_lists} exploring lists` },
                   pct(s.exploration_share || 0)));
      return tr;
    }));
    const head = el("tr");
    head.append(el("th", { scope: "col" }, "position"), ...surfaces.map((s) => el("th", { scope: "col" }, s.surface)));
    phead.replaceChildren(head);
    const at = surfaces.map((s) => Object.fromEntries((s.by_position || []).map((p) => [p.position, p])));
    const positions = [...new Set(surfaces.flatMap((s) => (s.by_position || []).map((p) => p.position)))]
      .sort((a, b) => a - b);
    const top = Math.max(...surfaces.flatMap((s) => (s.by_position || []).map((p) => p.ctr)), 0.001);
    pbody.replaceChildren(...positions.map((pos) => {
      const tr = el("tr", { "data-position": String(pos) });
      tr.append(el("th", { scope: "row" }, String(pos)));
      at.forEach((byPos) => {
        const p = byPos[pos];
        const td = el("td");
        if (p) {
          td.append(el("meter", { min: "0", max: String(top), value: String(p.ctr) }, pct(p.ctr)),
                    document.createTextNode(` ${pct(p.ctr)} (${p.clicks}/${p.shown})`));
        }
        tr.append(td);
      });
      return tr;
    }));
  }

  async function loadStats() {
    try {
      const s = await api("GET", "/v1/admin/stats?days=60");
      drawChart(s.events_per_day || []);
      drawSurfaces(s.surfaces || []);
    } catch (e) {
      document.getElementById("events-chart").textContent = "could not load the event counts: " + e.message;
    }
  }

  // -- experiments: one block per experiment, a row per variant; start / stop / choose a winner ----
  const when = (ts) => (ts ? new Date(ts * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC" : "");
  const withCi = (r) => `${pct(r.value)} [${pct(r.low)}–${pct(r.high)}]`;
  // The newest off-policy estimate of the variant's policy (vitrine eval ope --policy ... --record): DR when
  // there is one (strategy policies), else SNIPS, with its 95% interval.
  const opeCell = (ope) => {
    if (!ope || !ope.estimates) return el("td", { class: "ope" }, "—");
    const name = ope.estimates.DR ? "DR" : (ope.estimates.SNIPS ? "SNIPS" : Object.keys(ope.estimates)[0]);
    const e = ope.estimates[name];
    const [lo, hi] = e.interval || [e.value, e.value];
    return el("td", { class: "ope", title: `${name} on ${ope.rows} logged rows, computed ${when(ope.computed_at)}` },
              `${pct(e.value)} [${pct(lo)}–${pct(hi)}] (${name})`);
  };
  const signed = (x) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(3)}`;

  function tellExperiment(text) {
    document.getElementById("experiment-message").textContent = text;
  }

  async function experimentAction(path, body, done) {
    try {
      const e = await api("POST", path, body);
      tellExperiment(done(e));
    } catch (err) {
      tellExperiment("could not do it: " + err.message);
    }
    await loadExperiments();
  }

  function drawExperiment(e) {
    const box = el("article", { class: "experiment", "data-experiment": e.name, "data-state": e.state });
    box.append(el("h3", {}, e.name));
    const facts = [`${e.kind} on ${e.surface}`, e.state, `started ${when(e.created_at)}`];
    if (e.stopped_at) facts.push(`stopped ${when(e.stopped_at)}`);
    if (e.winner) facts.push(`winner: ${e.winner}`);
    box.append(el("p", { class: "muted" }, facts.join(" · ")));
    const st = e.stats || { variants: [] };
    const byName = Object.fromEntries((st.variants || []).map((v) => [v.variant, v]));
    const table = el("table", { class: "experiment-variants" });
    const head = el("tr");
    for (const h of ["variant", "policy", "share", "lists", "shoppers", "shown", "CTR (95%)", "conversion (95%)",
                     "estimated CTR before it ran (OPE)", ""]) {
      head.append(el("th", { scope: "col" }, h));
    }
    const thead = el("thead");
    thead.append(head);
    table.append(thead);
    const body = el("tbody");
    for (const v of e.variants) {
      const s = byName[v.name];
      const tr = el("tr", { "data-variant": v.name });
      const name = el("th", { scope: "row" }, v.name);
      if (e.winner === v.name) { name.append(" "); name.append(el("strong", {}, "(winner)")); }
      tr.append(name, el("td", {}, v.policy), el("td", {}, e.kind === "interleave" ? "all lists" : pct(v.share)));
      if (s) {
        tr.append(el("td", {}, String(s.lists)), el("td", {}, String(s.shoppers)), el("td", {}, String(s.shown)),
                  el("td", { title: `${s.clicks} clicked`, class: "ctr" }, s.shown ? withCi(s.ctr) : "—"),
                  el("td", { title: `${s.purchases} bought`, class: "conversion" }, s.shown ? withCi(s.conversion) : "—"),
                  opeCell(s.ope));
      } else {
        tr.append(el("td"), el("td"), el("td"), el("td"), el("td"), el("td"));
      }
      const cell = el("td");
      if (!e.winner) {
        const b = el("button", { type: "button", class: "choose-winner" }, "Choose as winner");
        b.addEventListener("click", () => {
          b.disabled = true;
          experimentAction(`/v1/admin/experiments/${encodeURIComponent(e.name)}/winner`, { variant: v.name },
                           (r) => `${r.name}: ${r.winner} chosen; the experiment is stopped`);
        });
        cell.append(b);
      }
      tr.append(cell);
      body.append(tr);
    }
    table.append(body);
    box.append(table);
    const il = st.interleaving;
    if (il) {
      const [a, b] = e.variants.map((v) => v.name);
      box.append(el("p", { class: "interleaving" },
        `Lists won: ${a} ${il.wins_a}, ${b} ${il.wins_b}, ties ${il.ties} (${il.no_clicks} without clicks). ` +
        `Preference for ${b}: ${signed(il.preference)} [${signed(il.low)}, ${signed(il.high)}], ` +
        `sign test p = ${il.p_value.toPrecision(2)}.`));
    }
    if (e.state === "running") {
      const actions = el("div", { class: "admin-actions" });
      const stop = el("button", { type: "button", class: "stop-experiment" }, "Stop");
      stop.addEventListener("click", () => {
        stop.disabled = true;
        experimentAction(`/v1/admin/experiments/${encodeURIComponent(e.name)}/stop`, undefined,
                         (r) => `${r.name} stopped`);
      });
      actions.append(stop);
      box.append(actions);
    }
    return box;
  }

  async function loadExperiments() {
    const box = document.getElementById("experiments");
    try {
      const r = await api("GET", "/v1/admin/experiments");
      const list = r.experiments || [];
      if (!list.length) box.replaceChildren(el("p", { class: "muted" }, "No experiments yet."));
      else box.replaceChildren(...list.map(drawExperiment));
      box.dataset.loaded = String(list.length);
    } catch (e) {
      box.replaceChildren(el("p", {}, "could not load the experiments: " + e.message));
    }
  }

  // An added row may be left empty: it is skipped.
  function variantRow() {
    const tr = el("tr");
    tr.append(el("td"), el("td"), el("td"));
    tr.cells[0].append(el("input", { name: "variant-name", "aria-label": "variant name", maxlength: "64" }));
    tr.cells[1].append(el("input", { name: "variant-policy", "aria-label": "policy", list: "experiment-policies" }));
    tr.cells[2].append(el("input", { name: "variant-share", "aria-label": "share", type: "number", min: "0", max: "1",
                                     step: "any" }));
    return tr;
  }

  async function startExperiment(ev) {
    ev.preventDefault();
    const variants = [...document.querySelectorAll("#experiment-variants tbody tr")].map((tr) => {
      const get = (n) => tr.querySelector(`[name="${n}"]`).value.trim();
      const v = { name: get("variant-name"), policy: get("variant-policy") };
      if (get("variant-share") !== "") v.share = Number(get("variant-share"));
      return v;
    }).filter((v) => v.name || v.policy);
    const button = document.getElementById("experiment-start");
    button.disabled = true;
    try {
      const value = (id) => document.getElementById(id).value.trim();
      const e = await api("POST", "/v1/admin/experiments", {
        name: value("experiment-name"), surface: value("experiment-surface"), kind: value("experiment-kind"), variants,
      });
      tellExperiment(`${e.name} started on ${e.surface}`);
      document.getElementById("experiment-name").value = "";
      await loadExperiments();
    } catch (err) {
      tellExperiment("could not start it: " + err.message);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("rebuild").addEventListener("click", rebuild);
    document.getElementById("rollback").addEventListener("click", rollback);
    document.getElementById("experiment-form").addEventListener("submit", startExperiment);
    document.getElementById("experiment-add-variant").addEventListener("click", () => {
      document.querySelector("#experiment-variants tbody").append(variantRow());
    });
    loadStats();
    loadExperiments();
  });
})();
