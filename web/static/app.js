// Vitrine storefront: type-ahead suggestions, shopper events, the "for you" strip, the debug toggle.
// Plain search works without this file (forms and links); everything here is an enhancement.
"use strict";

(function () {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const csrf = meta("csrf-token");
  const shopper = meta("shopper");

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- "why this result" toggle: a class on <body>, remembered in localStorage ----------------
  function setupDebug() {
    const box = document.getElementById("debug-toggle");
    if (!box) return;
    const params = new URLSearchParams(location.search);
    const saved = localStorage.getItem("vitrine-debug") === "1";
    const on = params.get("debug") === "1" || saved;
    box.checked = on;
    document.body.classList.toggle("debug", on);
    box.addEventListener("change", () => {
      document.body.classList.toggle("debug", box.checked);
      localStorage.setItem("vitrine-debug", box.checked ? "1" : "0");
    });
  }

  // -- suggestions: an ARIA combobox over GET /v1/suggest ----------------------------------------
  function setupSuggest() {
    const input = document.getElementById("q");
    const list = document.getElementById("suggestions");
    if (!input || !list) return;
    let items = [];
    let active = -1;
    let timer = null;
    let seq = 0;

    function close() {
      list.hidden = true;
      list.replaceChildren();
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
      items = [];
      active = -1;
    }

    function go(s) {
      if (s.kind === "item" && s.id) {
        location.href = "/items/" + encodeURIComponent(s.id);
      } else {
        const leaf = (s.category || s.text).split(" > ").pop();
        const q = new URLSearchParams({ q: leaf, category: s.category || "" });
        location.href = "/?" + q.toString();
      }
    }

    function highlight(i) {
      active = i;
      list.querySelectorAll("[role=option]").forEach((li, j) => li.setAttribute("aria-selected", j === i ? "true" : "false"));
      if (i >= 0) input.setAttribute("aria-activedescendant", `suggestion-${i}`);
      else input.removeAttribute("aria-activedescendant");
    }

    function render(suggestions) {
      items = suggestions;
      list.replaceChildren();
      suggestions.forEach((s, i) => {
        const li = el("li", { role: "option", id: `suggestion-${i}`, "aria-selected": "false", "data-kind": s.kind });
        li.append(el("span", { class: "text" }, s.text));
        const note = s.kind === "category" ? `category · ${s.count} items` : (s.category || "").split(" > ").pop();
        li.append(el("span", { class: "note" }, note));
        li.addEventListener("mousedown", (ev) => { ev.preventDefault(); go(s); });
        list.append(li);
      });
      const open = suggestions.length > 0;
      list.hidden = !open;
      input.setAttribute("aria-expanded", open ? "true" : "false");
      active = -1;
    }

    async function fetchSuggestions() {
      const q = input.value.trim();
      if (!q) { close(); return; }
      const mine = ++seq;
      try {
        const r = await fetch("/v1/suggest?" + new URLSearchParams({ q, k: "8" }));
        if (!r.ok || mine !== seq) return;
        const body = await r.json();
        if (mine === seq) render(body.suggestions || []);
      } catch (e) { /* offline or server gone: the plain form still works */ }
    }

    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(fetchSuggestions, 120);
    });
    input.addEventListener("keydown", (ev) => {
      if (list.hidden) return;
      if (ev.key === "ArrowDown") { ev.preventDefault(); highlight((active + 1) % items.length); }
      else if (ev.key === "ArrowUp") { ev.preventDefault(); highlight((active - 1 + items.length) % items.length); }
      else if (ev.key === "Enter" && active >= 0) { ev.preventDefault(); go(items[active]); }
      else if (ev.key === "Escape") { close(); }
    });
    input.addEventListener("blur", () => setTimeout(close, 150));
  }

  // -- shopper events and the "for you" strip ----------------------------------------------
  function eventId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "ev-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  // The list a link sits in (its request_id) and the card's position there, sent with the event (attribution).
  function shownIn(node) {
    const list = node.closest && node.closest("[data-request-id]");
    const card = node.closest && node.closest("[data-position]");
    const out = {};
    if (list && list.dataset.requestId) out.request_id = list.dataset.requestId;
    if (list && card && Number(card.dataset.position) >= 1) out.position = Number(card.dataset.position);
    return out;
  }

  async function sendEvent(type, itemId, keepalive, shown) {
    if (!shopper) return false;
    const body = { event_id: eventId(), user_id: shopper, type, item_id: itemId, timestamp: Date.now() / 1000,
                   ...(shown || {}) };
    try {
      const r = await fetch("/v1/events", {
        method: "POST", keepalive: !!keepalive, credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      if (!r.ok) return false;
      const res = await r.json();
      return (res.accepted || []).length === 1;
    } catch (e) {
      return false;
    }
  }

  function recCard(r, i) {
    const li = el("li", { class: "card", "data-item": r.id, "data-position": String(i + 1) });
    li.append(el("a", { class: "item-link", href: "/items/" + encodeURIComponent(r.id), "data-item": r.id, title: r.title }, r.title));
    const meta = el("div", { class: "meta" });
    if (r.category) meta.append(el("span", { class: "category" }, r.category.split(" > ").pop()));
    if (r.brand) meta.append(el("span", { class: "brand" }, r.brand));
    meta.append(el("span", { class: "price" }, r.price === null || r.price === undefined ? "no price" : "$" + Number(r.price).toFixed(2)));
    li.append(meta);
    if (r.reason) li.append(el("p", { class: "reason", title: r.reason }, r.reason));
    if (r.source) li.append(el("p", { class: "why source" }, "source: " + r.source));
    if (r.score_parts) {
      const dl = el("dl", { class: "why" });
      for (const [k, v] of Object.entries(r.score_parts)) {
        const row = el("div");
        row.append(el("dt", {}, k), el("dd", {}, Number(v).toFixed(4)));
        dl.append(row);
      }
      li.append(dl);
    }
    return li;
  }

  // A sponsored item of a strip (engine.ads): labelled, no organic position, its click charged by setupAds.
  function adCard(a) {
    const li = el("li", { class: "card sponsored", "data-item": a.id, "data-ad": a.ad });
    li.append(el("p", { class: "sponsored-label" }, "Sponsored"));
    li.append(el("a", { class: "item-link ad-link", href: "/items/" + encodeURIComponent(a.id), "data-item": a.id, title: a.title }, a.title));
    const meta = el("div", { class: "meta" });
    if (a.category) meta.append(el("span", { class: "category" }, a.category.split(" > ").pop()));
    meta.append(el("span", { class: "price" }, a.price === null || a.price === undefined ? "no price" : "$" + Number(a.price).toFixed(2)));
    li.append(meta);
    return li;
  }

  async function refreshForYou() {
    const strip = document.getElementById("for-you");
    if (!strip || !shopper) return;
    try {
      const r = await fetch(`/v1/users/${encodeURIComponent(shopper)}/recommendations?k=8`);
      if (!r.ok) return;
      const body = await r.json();
      const ul = strip.querySelector("ul.cards");
      const cards = (body.recommendations || []).map(recCard);
      for (const a of [...(body.sponsored || [])].sort((x, y) => x.position - y.position)) {
        cards.splice(Math.min(a.position - 1, cards.length), 0, adCard(a));
      }
      ul.replaceChildren(...cards);
      if (body.request_id) ul.dataset.requestId = body.request_id;
      const empty = strip.querySelector(".empty");
      if (empty) empty.hidden = (body.recommendations || []).length > 0;
      strip.dataset.updated = String(Date.now());
      strip.dispatchEvent(new CustomEvent("vitrine:for-you", { bubbles: true }));
    } catch (e) { /* keep the old strip */ }
  }

  // A sponsored result's click charges its campaign once (POST /v1/ads/clicks with the signed ad token),
  // sent without holding up the navigation; the server ignores repeats.
  function setupAds() {
    document.addEventListener("click", (ev) => {
      const a = ev.target.closest && ev.target.closest("a.ad-link");
      const card = a && a.closest("[data-ad]");
      if (!card) return;
      fetch("/v1/ads/clicks", { method: "POST", keepalive: true, headers: { "Content-Type": "application/json" },
                                body: JSON.stringify({ ad: card.dataset.ad }) }).catch(() => {});
    });
  }

  function setupShopper() {
    const picker = document.getElementById("shopper-select");
    if (picker) picker.addEventListener("change", () => picker.form.submit());
    if (!shopper) return;
    // clicks on product links: recorded without holding up the navigation
    document.addEventListener("click", (ev) => {
      const a = ev.target.closest && ev.target.closest("a.item-link");
      if (a && a.dataset.item) sendEvent("click", a.dataset.item, true, shownIn(a));
    });
    // the item page: a view on load, cart and purchase buttons
    const product = document.querySelector("article.product");
    if (product) {
      sendEvent("view", product.dataset.item).then((ok) => ok && refreshForYou());
    }
    document.querySelectorAll("button.event").forEach((b) => {
      b.addEventListener("click", async () => {
        const status = b.parentElement.querySelector(".status");
        const ok = await sendEvent(b.dataset.type, b.dataset.item);
        if (status) status.textContent = ok ? (b.dataset.type === "purchase" ? "Bought." : "Added to the cart.") : "Could not record that.";
        if (ok) refreshForYou();
      });
    });
    // back from another page: the strip may be stale
    window.addEventListener("pageshow", (ev) => { if (ev.persisted) refreshForYou(); });
  }

  // -- "Ask a question" on the item page: answers from the catalog and past answers (/v1/items/<id>/answers) --
  function setupAsk() {
    const form = document.querySelector(".ask-form");
    if (!form) return;
    const status = document.querySelector(".ask-status");
    const list = document.querySelector(".answers");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const q = form.elements.q.value.trim();
      if (!q) return;
      list.replaceChildren();
      status.textContent = "Looking for answers…";
      try {
        const r = await fetch(form.action + "?" + new URLSearchParams({ q, k: "5" }));
        const body = await r.json();
        if (!r.ok) { status.textContent = body.message || "Could not ask that."; return; }
        status.textContent = body.no_answer ? body.message : "";
        for (const a of body.answers) {
          const li = el("li", { class: "answer" });
          li.append(el("p", { class: "answer-text" }, a.answer));
          const parts = [a.source === "past answer" ? `Answer to “${a.question}”` : `From the ${a.source.replace(/^catalog /, "catalog's ")}`];
          if (a.date) parts.push(a.date);
          parts.push(`score ${a.score.toFixed(2)}`);
          li.append(el("p", { class: "answer-meta" }, parts.join(" · ")));
          list.append(li);
        }
      } catch (e) {
        status.textContent = "Could not reach the server.";
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupDebug();
    setupAsk();
    setupSuggest();
    setupAds();
    setupShopper();
  });
})();
