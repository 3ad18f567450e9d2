// Vitrine advertiser page: campaigns, spend against the budget and clicks per hour (SVG, no library), the
// daily report and its CSV. The ads key stays in sessionStorage and goes only to /v1/ads as a bearer key.
(() => {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const money = (minor) => (minor / 100).toFixed(2);
  const pct = (x) => `${(100 * x).toFixed(2)}%`;

  function el(tag, attrs, text) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function svg(tag, attrs) {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    return n;
  }
  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: `Bearer ${sessionStorage.getItem("adsKey") || ""}` } });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error?.message || `HTTP ${r.status}`);
    return r;
  }

  // Cumulative spend per hour (line) against the budget spread evenly over the day (dashed) and the budget.
  function drawSpend(box, data) {
    const W = 560, H = 200, P = 36;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "spend against the budget" });
    const top = Math.max(data.daily_budget, data.hours.reduce((a, h) => a + h.spend, 0)) * 1.1 || 1;
    const x = (h) => P + (h / 24) * (W - 2 * P);
    const y = (v) => H - P - (v / top) * (H - 2 * P);
    let cum = 0;
    const pts = [[0, 0], ...data.hours.map((h) => [h.hour + 1, (cum += h.spend)])];
    s.append(svg("line", { x1: x(0), y1: y(data.daily_budget), x2: x(24), y2: y(data.daily_budget), stroke: "#c44e52" }));
    s.append(svg("line", { x1: x(0), y1: y(0), x2: x(24), y2: y(data.daily_budget), stroke: "#888", "stroke-dasharray": "4 3" }));
    s.append(svg("polyline", { points: pts.map(([h, v]) => `${x(h)},${y(v)}`).join(" "), fill: "none", stroke: "#4c72b0",
                               "stroke-width": 2, class: "spend-line" }));
    for (const h of [0, 6, 12, 18, 24]) {
      const t = svg("text", { x: x(h), y: H - 12, "text-anchor": "middle", "font-size": 11 });
      t.textContent = `${h}h`;
      s.append(t);
    }
    const label = svg("text", { x: W - P, y: y(data.daily_budget) - 4, "text-anchor": "end", "font-size": 11 });
    label.textContent = `budget ${money(data.daily_budget)}`;
    s.append(label);
    box.replaceChildren(s);
  }

  function drawClicks(box, data) {
    const W = 560, H = 160, P = 30;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "clicks per hour" });
    const top = Math.max(1, ...data.hours.map((h) => h.clicks));
    const bw = (W - 2 * P) / 24;
    for (const h of data.hours) {
      const bh = (h.clicks / top) * (H - 2 * P);
      const r = svg("rect", { x: P + h.hour * bw + 1, y: H - P - bh, width: bw - 2, height: bh, fill: "#55a868" });
      const t = svg("title", {});
      t.textContent = `${h.hour}h: ${h.clicks} clicks, ${money(h.spend)} spent`;
      r.append(t);
      s.append(r);
    }
    box.replaceChildren(s);
  }

  async function show(campaignId, campaigns) {
    const c = campaigns.find((x) => x.id === campaignId);
    const facts = $("ads-facts");
    facts.replaceChildren(...[["state", c.state], ["bid per click", money(c.bid)], ["daily budget", money(c.daily_budget)],
      ["spent today", money(c.spend_today)], ["items", c.items.join(", ")]].map(([k, v]) => {
      const d = el("div");
      d.append(el("dt", {}, k), el("dd", {}, v));
      return d;
    }));
    const hourly = await (await api(`/v1/ads/reports/hourly?campaign=${encodeURIComponent(campaignId)}`)).json();
    drawSpend($("ads-spend-chart"), hourly);
    drawClicks($("ads-clicks-chart"), hourly);
    const report = await (await api(`/v1/ads/reports?campaign=${encodeURIComponent(campaignId)}`)).json();
    $("ads-report").querySelector("tbody").replaceChildren(...report.rows.map((r) => {
      const tr = el("tr", { "data-day": r.day });
      tr.append(el("th", { scope: "row" }, r.day), el("td", {}, String(r.impressions)), el("td", {}, String(r.clicks)),
                el("td", {}, pct(r.ctr)), el("td", {}, money(r.spend)), el("td", {}, money(r.avg_cpc)),
                el("td", {}, String(r.purchases)), el("td", {}, r.roas.toFixed(2)));
      return tr;
    }));
    $("ads-csv").onclick = async (ev) => {
      ev.preventDefault();
      const blob = await (await api(`/v1/ads/reports?format=csv&campaign=${encodeURIComponent(campaignId)}`)).blob();
      const a = el("a", { href: URL.createObjectURL(blob), download: "ads-report.csv" });
      a.click();
    };
  }

  async function load() {
    try {
      const { campaigns } = await (await api("/v1/ads/campaigns")).json();
      $("ads-body").hidden = false;
      $("ads-message").textContent = campaigns.length ? "" : "No campaign yet: create one with POST /v1/ads/campaigns.";
      const pick = $("ads-campaign");
      pick.replaceChildren(...campaigns.map((c) => el("option", { value: c.id }, `${c.name} (${c.id})`)));
      pick.onchange = () => show(pick.value, campaigns);
      if (campaigns.length) await show(campaigns[0].id, campaigns);
    } catch (e) {
      $("ads-body").hidden = true;
      $("ads-message").textContent = `Could not load the campaigns: ${e.message}`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = $("ads-login");
    if (!form) return;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem("adsKey", $("ads-key").value);
      load();
    });
    if (sessionStorage.getItem("adsKey")) load();
  });
})();
