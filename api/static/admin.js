// The admin dashboard: live connection counts from `admin:connections`, and the performance
// endpoints polled every few seconds; each panel says "unavailable" on its own when its source fails.
"use strict";

(function () {
  const { el, $, api, LiveSocket, boot, showMessage } = window.dms;
  const POLL_MS = 5000;
  const ROLES = ["admin", "restaurant", "driver", "demo"];

  function stamp(name, text) {
    const node = $('[data-updated="' + name + '"]');
    if (node) node.textContent = text || "updated " + new Date().toLocaleTimeString();
  }

  function renderConnections(body) {
    $("#total").textContent = String(body.total);
    $("#subscriptions").textContent = String(body.subscriptions);
    const roles = $("#by-role tbody");
    roles.replaceChildren(...ROLES.map((role) => el("tr", { "data-role": role },
      el("th", { text: role }), el("td", { text: String((body.by_role || {})[role] || 0) }))));
    const rows = (body.instances || []).map((i) => el("tr", { "data-instance": i.id },
      el("td", { text: i.id }), el("td", { class: "num", text: String(i.connections) }),
      el("td", { class: "num", text: String(i.subscriptions) }),
      el("td", { class: "num", text: String(i.messages_out_per_s) }),
      el("td", { class: "num", text: String(i.slow_consumer_disconnects) }),
      el("td", { text: new Date(i.last_seen).toLocaleTimeString() })));
    $("#instances tbody").replaceChildren(...rows);
    stamp("connections");
  }

  function unavailable(name, error) {
    const body = $('[data-body="' + name + '"]');
    const why = error && error.status ? "HTTP " + error.status + (error.code ? " " + error.code : "") : "no answer";
    body.replaceChildren(el("p", { class: "unavailable", title: error ? error.message : null },
      "unavailable", el("span", { class: "why", text: " · " + why })));
    stamp(name, "");
  }

  function scalar(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(2);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  // Key/value table for an object whose exact fields may grow (pool stats, cache numbers).
  function kvTable(object, caption) {
    const rows = Object.entries(object || {}).map(([key, value]) =>
      el("tr", { "data-key": key }, el("th", { text: key.replace(/_/g, " ") }), el("td", { text: scalar(value) })));
    return el("table", { class: "kv" }, caption ? el("caption", { text: caption }) : null, el("tbody", {}, ...rows));
  }

  function listOf(body, ...keys) {
    if (Array.isArray(body)) return body;
    for (const key of keys) if (body && Array.isArray(body[key])) return body[key];
    return [];
  }

  function renderDatabase(body) {
    const latency = body.query_performance || {};
    $('[data-body="database"]').replaceChildren(
      el("p", { class: "big" }, "p50 ", el("b", { text: scalar(latency.p50_ms) }), " ms · p95 ",
        el("b", { text: scalar(latency.p95_ms) }), " ms · p99 ", el("b", { text: scalar(latency.p99_ms) }), " ms"),
      kvTable(body.connection_pool, "Connection pool"));
    stamp("database");
    const alerts = listOf(body.alerts, "items", "firing");
    const box = $('[data-body="alerts"]');
    if (!alerts.length) {
      box.replaceChildren(el("p", { class: "ok", text: "none firing" }));
    } else {
      box.replaceChildren(el("ul", { class: "alerts" }, ...alerts.map((alert) => {
        if (typeof alert !== "object" || alert === null) return el("li", { class: "alert", text: String(alert) });
        const name = alert.name || alert.alert || alert.code || "alert";
        const detail = alert.message || alert.description || alert.summary || "";
        return el("li", { class: "alert severity-" + String(alert.severity || "warning") },
          el("b", { text: name }), detail ? " " + detail : "");
      })));
    }
    stamp("alerts");
  }

  function renderSlow(body) {
    const rows = listOf(body, "items", "slow_queries", "queries").slice(0, 20);
    const box = $('[data-body="slow"]');
    if (!rows.length) {
      box.replaceChildren(el("p", { class: "ok", text: "no slow queries" }));
    } else {
      const fields = ["calls", "mean_ms", "max_ms", "total_ms"];
      box.replaceChildren(el("table", { class: "list" },
        el("thead", {}, el("tr", {}, el("th", { text: "query" }), ...fields.map((f) => el("th", { text: f.replace("_", " ") })))),
        el("tbody", {}, ...rows.map((row) => el("tr", {},
          el("td", { class: "query", text: String(row.query || row.statement || "") }),
          ...fields.map((f) => el("td", { class: "num", text: scalar(row[f]) })))))));
    }
    stamp("slow");
  }

  function renderCache(body) {
    const ratio = typeof body.hit_ratio === "number" ? (body.hit_ratio * 100).toFixed(1) + " %" : "–";
    $('[data-body="cache"]').replaceChildren(
      el("p", { class: "big" }, "hit ratio ", el("b", { "data-hit-ratio": "", text: ratio })),
      kvTable({ hits: body.hits, misses: body.misses, keys: body.keys }));
    stamp("cache");
  }

  function poll(token, name, path, draw) {
    const once = () => api(token, path).then(draw).catch((error) => {
      unavailable(name, error);
      if (name === "database") unavailable("alerts", error);
    });
    once();
    setInterval(once, POLL_MS);
  }

  boot((token, claims) => {
    if (claims.role !== "admin") {
      $("#main").hidden = true;
      showMessage("This dashboard needs an admin token; this one is for the role \u201c" + claims.role +
        "\u201d. Use \u201cforget token\u201d and paste an admin token.");
      window.dms.setIndicator("offline", "not an admin");
      return;
    }
    api(token, "/api/realtime/connections").then(renderConnections).catch((error) => {
      showMessage("Connection counts unavailable: " + error.message);
    });
    const live = new LiveSocket(window.dms.gatewayUrl, token, {
      event(frame) {
        if (frame.event === "connections.stats") renderConnections(frame.data);
      },
      fatal: showMessage,
    });
    live.subscribe("admin:connections", { recover: false });
    live.start();
    poll(token, "database", "/api/performance/database", renderDatabase);
    poll(token, "slow", "/api/performance/slow-queries?min_ms=100", renderSlow);
    poll(token, "cache", "/api/performance/cache", renderCache);
    window.dmsAdmin = { drop: () => live.drop() };
  });
})();
