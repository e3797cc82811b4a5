// The admin dashboard. Live over the WebSocket: connection counts (`admin:connections`), the fleet
// (`drivers`) and orders (`orders`, for the "waiting for a driver" list). Over REST: each source once
// at start and after a reconnect, then only the figures that have no channel, slowly (SCHEDULE),
// and not while the tab is hidden: a page left open all day costs about 110 requests an hour of the
// admin's 1,000. Each panel says "unavailable" on its own when its source fails.
"use strict";

(function () {
  const { el, $, api, liveClient, boot, showMessage, age } = window.dms;
  const ROLES = ["admin", "restaurant", "driver", "demo"];
  // Milliseconds between polls of what no channel carries.
  const SCHEDULE = { database: 60000, cache: 120000, slow: 300000, chart: 300000 };
  const ACTIVE = ["pending", "confirmed", "preparing", "ready", "delivering"];
  const ASSIGNABLE = ["confirmed", "preparing", "ready"];
  const STATUS_ORDER = { online: 0, on_break: 1, offline: 2 };
  const SVG = "http://www.w3.org/2000/svg";
  const DAY_MS = 86400000;

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

  // -- slow polling: each source on its own period, skipped while the tab is hidden ----------------
  const polls = new Map(); // name -> {every, run, last}

  function poll(name, run) {
    const entry = { every: SCHEDULE[name], run, last: Date.now() };
    polls.set(name, entry);
    run();
    const tick = () => {
      if (!document.hidden) {
        entry.last = Date.now();
        run();
      }
      setTimeout(tick, entry.every);
    };
    setTimeout(tick, entry.every);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    for (const entry of polls.values()) {
      if (Date.now() - entry.last >= entry.every) {
        entry.last = Date.now();
        entry.run();
      }
    }
  });

  function pollJson(token, name, path, draw) {
    poll(name, () => api(token, path).then(draw).catch((error) => {
      unavailable(name, error);
      if (name === "database") unavailable("alerts", error);
    }));
  }

  // -- small SVG helpers (DOM nodes only: the page runs under Trusted Types) -------------------------
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  const short = (id) => String(id || "").slice(0, 8);

  // -- the fleet: drivers, their positions and active orders, live from `drivers` and `orders` ------
  const fleet = new Map(); // driver id -> {id, display_name, status, last_location, active_order_ids}
  const awaiting = new Map(); // order id -> order event data (assignable and without a driver)
  const chosen = new Map(); // order id -> driver id picked in its select, kept across re-renders
  const rowErrors = new Map(); // order id -> last assignment error
  let renderTimer = null;

  function scheduleRender() {
    if (renderTimer !== null) return;
    renderTimer = setTimeout(() => {
      renderTimer = null;
      renderFleet();
    }, 200); // a burst of positions is drawn once
  }

  function driverName(driver) {
    return driver.display_name || short(driver.id);
  }

  function sortedDrivers() {
    return [...fleet.values()].sort((a, b) =>
      (STATUS_ORDER[a.status] ?? 3) - (STATUS_ORDER[b.status] ?? 3) || driverName(a).localeCompare(driverName(b)));
  }

  function renderFleet() {
    const drivers = sortedDrivers();
    $("#drivers tbody").replaceChildren(...drivers.map((d) => {
      const where = d.last_location;
      return el("tr", { "data-driver-id": d.id, "data-status": d.status },
        el("td", { title: d.id }, driverName(d)),
        el("td", {}, el("span", { class: "badge status-" + d.status, text: d.status.replace("_", " ") })),
        el("td", { class: "num position", text: where ? where.lat.toFixed(5) + ", " + where.lng.toFixed(5) : "–" }),
        el("td", { class: "seen", text: where ? age(where.recorded_at) : "never" }),
        el("td", { class: "active-orders", "data-count": String(d.active_order_ids.length) },
          d.active_order_ids.length ? d.active_order_ids.map(short).join(", ") : "–"));
    }));
    renderMap(drivers);
    stamp("drivers");
  }

  // Positions projected into the box around them (equirectangular, longitude scaled by the
  // latitude's cosine), so a city-sized fleet fills the map with no tiles and no library.
  function renderMap(drivers) {
    const placed = drivers.filter((d) => d.last_location);
    const W = 400, H = 260, PAD = 22;
    const dots = $("#fleet-dots");
    const grid = $("#fleet-grid");
    if (!placed.length) {
      grid.replaceChildren(svg("text", { class: "map-label", x: W / 2 - 50, y: H / 2, text: "no positions yet" }));
      dots.replaceChildren();
      return;
    }
    const lats = placed.map((d) => d.last_location.lat), lngs = placed.map((d) => d.last_location.lng);
    const midLat = (Math.min(...lats) + Math.max(...lats)) / 2;
    const k = Math.max(Math.cos((midLat * Math.PI) / 180), 0.05);
    let west = Math.min(...lngs) * k, east = Math.max(...lngs) * k;
    let south = Math.min(...lats), north = Math.max(...lats);
    const span = Math.max(east - west, north - south, 0.005); // at least ~500 m across
    const cx = (west + east) / 2, cy = (south + north) / 2;
    const scale = Math.min((W - 2 * PAD) / span, (H - 2 * PAD) / span);
    west = cx - (W / 2) / scale; east = cx + (W / 2) / scale;
    south = cy - (H / 2) / scale; north = cy + (H / 2) / scale;
    const x = (lng) => ((lng * k - west) * scale);
    const y = (lat) => ((north - lat) * scale);
    const lines = [];
    for (let i = 1; i < 4; i++) {
      lines.push(svg("line", { class: "map-grid", x1: (W * i) / 4, y1: 0, x2: (W * i) / 4, y2: H }));
      lines.push(svg("line", { class: "map-grid", x1: 0, y1: (H * i) / 4, x2: W, y2: (H * i) / 4 }));
    }
    lines.push(svg("text", { class: "map-label", x: 4, y: H - 4,
      text: south.toFixed(3) + "°, " + (west / k).toFixed(3) + "° … " + north.toFixed(3) + "°, " + (east / k).toFixed(3) + "°" }));
    grid.replaceChildren(...lines);
    dots.replaceChildren(...placed.map((d) => {
      const px = x(d.last_location.lng).toFixed(1), py = y(d.last_location.lat).toFixed(1);
      return svg("g", { "data-driver-id": d.id },
        svg("circle", { class: "dot status-" + d.status, cx: px, cy: py, r: 6, "data-driver-id": d.id },
          svg("title", { text: driverName(d) + " · " + d.status })),
        svg("text", { class: "dot-label", x: Number(px) + 8, y: Number(py) + 3, text: driverName(d) }));
    }));
  }

  function renderAwaiting(token) {
    const orders = [...awaiting.values()].sort((a, b) => String(a.updated_at).localeCompare(String(b.updated_at)));
    $("#awaiting-count").textContent = String(orders.length);
    const drivers = sortedDrivers();
    $("#awaiting tbody").replaceChildren(...orders.map((order) => {
      const select = el("select", { "aria-label": "driver for order " + short(order.order_id) },
        el("option", { value: "", text: "choose a driver" }),
        ...drivers.map((d) => el("option", { value: d.id,
          text: driverName(d) + " · " + d.status.replace("_", " ") + " · " + d.active_order_ids.length + " active" })));
      select.value = chosen.get(order.order_id) || "";
      select.addEventListener("change", () => chosen.set(order.order_id, select.value));
      const button = el("button", { type: "button", class: "assign", text: "Assign" });
      button.addEventListener("click", () => assign(token, order.order_id, select.value, button));
      const error = rowErrors.get(order.order_id);
      return el("tr", { "data-order-id": order.order_id, "data-status": order.status },
        el("td", { class: "short", title: order.order_id, text: short(order.order_id) }),
        el("td", { class: "short", title: order.restaurant_id, text: short(order.restaurant_id) }),
        el("td", { text: order.status }),
        el("td", { class: "num", text: order.total_amount || "–" }),
        el("td", {}, select),
        el("td", {}, button, error ? el("span", { class: "row-error", text: " " + error }) : null));
    }));
  }

  async function assign(token, orderId, driverId, button) {
    if (!driverId) {
      rowErrors.set(orderId, "choose a driver first");
      renderAwaiting(token);
      return;
    }
    button.disabled = true;
    try {
      const order = await api(token, "/api/orders/" + orderId + "/assign", { method: "POST", json: { driver_id: driverId } });
      rowErrors.delete(orderId);
      chosen.delete(orderId);
      applyOrder(token, { order_id: order.id, restaurant_id: order.restaurant_id, status: order.status,
                          driver_id: order.driver_id, total_amount: order.total_amount, updated_at: order.updated_at });
    } catch (error) {
      rowErrors.set(orderId, error.message + (error.code ? " (" + error.code + ")" : ""));
      renderAwaiting(token);
    }
  }

  // One order's new state (an event, or an assignment's answer): the waiting list and every
  // driver's active orders follow it.
  function applyOrder(token, data) {
    const waiting = ASSIGNABLE.includes(data.status) && !data.driver_id;
    const before = awaiting.has(data.order_id);
    if (waiting) awaiting.set(data.order_id, data);
    else awaiting.delete(data.order_id);
    let fleetChanged = false;
    for (const driver of fleet.values()) {
      const holds = driver.active_order_ids.includes(data.order_id);
      const should = driver.id === data.driver_id && ACTIVE.includes(data.status);
      if (holds && !should) driver.active_order_ids = driver.active_order_ids.filter((id) => id !== data.order_id);
      if (!holds && should) driver.active_order_ids = [...driver.active_order_ids, data.order_id];
      fleetChanged = fleetChanged || holds !== should;
    }
    if (fleetChanged) scheduleRender();
    if (waiting || before || fleetChanged) renderAwaiting(token);
  }

  function applyDriverEvent(token, frame) {
    const data = frame.data;
    let driver = fleet.get(data.driver_id);
    if (!driver) { // a driver that joined after the list was read
      driver = { id: data.driver_id, display_name: "", status: "offline", last_location: null, active_order_ids: [] };
      fleet.set(driver.id, driver);
    }
    if (frame.event === "driver.location") {
      driver.last_location = { lat: data.lat, lng: data.lng, recorded_at: data.recorded_at };
      scheduleRender();
    } else if (frame.event === "driver.status_changed") {
      driver.status = data.status;
      scheduleRender();
      renderAwaiting(token); // the driver choices show status
    }
  }

  async function loadFleet(token) {
    try {
      const drivers = [];
      let cursor = null;
      for (let page = 0; page < 5; page++) { // up to 1,000 drivers
        const body = await api(token, "/api/drivers?limit=200" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
        drivers.push(...body.items);
        cursor = body.next_cursor;
        if (!cursor) break;
      }
      fleet.clear();
      for (const driver of drivers) fleet.set(driver.id, driver);
      renderFleet();
    } catch (error) {
      $("#drivers tbody").replaceChildren(el("tr", {}, el("td", { colspan: "5", class: "unavailable",
        text: "unavailable · " + error.message })));
    }
  }

  async function loadAwaiting(token) {
    try {
      const pages = await Promise.all(ASSIGNABLE.map((status) => api(token, "/api/orders?limit=200&status=" + status)));
      awaiting.clear();
      for (const order of pages.flatMap((body) => body.items)) {
        if (!order.driver_id) {
          awaiting.set(order.id, { order_id: order.id, restaurant_id: order.restaurant_id, status: order.status,
                                   driver_id: null, total_amount: order.total_amount, updated_at: order.updated_at });
        }
      }
      renderAwaiting(token);
    } catch (error) {
      $("#awaiting tbody").replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "unavailable",
        text: "unavailable · " + error.message })));
    }
  }

  // -- the 7-day chart: bars for orders, a line for revenue, from GET /api/analytics/orders --------------
  function chartRange() {
    const now = new Date();
    const tomorrow = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()) + DAY_MS;
    return { from: new Date(tomorrow - 7 * DAY_MS), to: new Date(tomorrow) };
  }

  function drawChart(range, body) {
    const byDay = new Map(body.rows.map((row) => [row.key, row]));
    const days = [];
    for (let t = range.from.getTime(); t < range.to.getTime(); t += DAY_MS) {
      const key = new Date(t).toISOString().slice(0, 10);
      const row = byDay.get(key) || { orders: 0, revenue: "0.00" };
      days.push({ key, orders: row.orders, revenue: row.revenue });
    }
    const W = 720, H = 240, left = 40, right = 20, top = 40, bottom = 30;
    const step = (W - left - right) / days.length;
    const maxOrders = Math.max(1, ...days.map((d) => d.orders));
    const maxRevenue = Math.max(1, ...days.map((d) => Number(d.revenue)));
    const yOrders = (n) => top + (H - top - bottom) * (1 - n / maxOrders);
    const yRevenue = (r) => top + (H - top - bottom) * (1 - r / maxRevenue);
    const nodes = [
      svg("text", { class: "legend", x: left, y: 12, text: "bars: orders (max " + maxOrders + ")" }),
      svg("text", { class: "legend", x: left + 200, y: 12, text: "line: revenue (max " + maxRevenue.toFixed(2) + ")" }),
    ];
    const points = [];
    days.forEach((day, i) => {
      const x = left + i * step;
      const barTop = yOrders(day.orders);
      const tall = H - bottom - barTop > 20;
      nodes.push(svg("g", { class: "day", "data-day": day.key, "data-orders": day.orders, "data-revenue": day.revenue },
        svg("rect", { class: "bar", x: (x + step * 0.15).toFixed(1), y: barTop.toFixed(1), width: (step * 0.7).toFixed(1),
                      height: (H - bottom - barTop).toFixed(1) },
          svg("title", { text: day.key + ": " + day.orders + " orders, revenue " + day.revenue })),
        // Inside a tall bar (clear of the revenue label above it), else just above a short one.
        svg("text", { class: "bar-value" + (tall ? " inside" : ""), x: (x + step / 2).toFixed(1),
                      y: (tall ? barTop + 14 : barTop - 4).toFixed(1), text: String(day.orders) }),
        svg("text", { class: "axis-label", x: (x + step / 2).toFixed(1), y: H - 10, text: day.key.slice(5) })));
      points.push([x + step / 2, yRevenue(Number(day.revenue)), day.revenue, tall ? H : barTop]);
    });
    nodes.push(svg("polyline", { class: "revenue-line", points: points.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" ") }));
    for (const [px, py, revenue, barTop] of points) {
      nodes.push(svg("circle", { class: "revenue-dot", cx: px.toFixed(1), cy: py.toFixed(1), r: 3 }));
      // Above the dot and clear of the bar's own number, which sits just above the bar.
      const labelY = Math.max(top - 8, Math.min(py - 8, barTop - 18));
      nodes.push(svg("text", { class: "revenue-value", x: px.toFixed(1), y: labelY.toFixed(1), text: revenue }));
    }
    const chart = $("#chart");
    chart.dataset.from = body.from;
    chart.dataset.to = body.to;
    chart.replaceChildren(...nodes);
    stamp("chart");
  }

  function loadChart(token) {
    const range = chartRange();
    const query = "?group_by=day&from=" + range.from.toISOString() + "&to=" + range.to.toISOString();
    return api(token, "/api/analytics/orders" + query).then((body) => drawChart(range, body)).catch((error) => {
      const chart = $("#chart");
      chart.replaceChildren(svg("text", { class: "legend", x: 20, y: 40, text: "unavailable · " + error.message }));
      stamp("chart", "");
    });
  }

  // -- export: the CSV comes with the bearer token, so it is fetched and handed over as a download -------
  function setupExport(token) {
    const today = new Date().toISOString().slice(0, 10);
    $("#export-to").value = today;
    $("#export-from").value = new Date(Date.now() - 29 * DAY_MS).toISOString().slice(0, 10);
    $("#export-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const from = $("#export-from").value, to = $("#export-to").value;
      const end = new Date(Date.parse(to + "T00:00:00Z") + DAY_MS).toISOString().slice(0, 10);
      const status = $("#export-status");
      status.textContent = "exporting…";
      try {
        const response = await fetch("/api/orders/export.csv?created_from=" + from + "&created_to=" + end, {
          headers: { Authorization: "Bearer " + token }, cache: "no-store", credentials: "omit" });
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          throw new Error((body && body.error && body.error.message) || "HTTP " + response.status);
        }
        const blob = await response.blob();
        const link = el("a", { href: URL.createObjectURL(blob), download: "orders-" + from + "-" + to + ".csv" });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(link.href), 10000);
        status.textContent = "exported " + (blob.size / 1024).toFixed(1) + " KiB";
      } catch (error) {
        status.textContent = "export failed: " + error.message;
      }
    });
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
    let fleetLoads = 0;
    const live = liveClient(token, showMessage);
    // After a reconnect the fleet and the waiting list are read again: positions are not replayed.
    live.on("subscribed", (frame) => {
      if (frame.channel === "drivers" && fleetLoads++ > 0) loadFleet(token);
      if (frame.channel === "orders" && !frame.recovered && fleetLoads > 1) loadAwaiting(token);
    });
    live.subscribe("admin:connections", (frame) => renderConnections(frame.data), { recover: false });
    live.subscribe("drivers", (frame) => applyDriverEvent(token, frame), { recover: false });
    live.subscribe("orders", (frame) => { if (frame.data && frame.data.order_id) applyOrder(token, frame.data); });
    loadFleet(token).then(() => loadAwaiting(token));
    setInterval(() => { if (!document.hidden && fleet.size) renderFleet(); }, 10000); // ages; no request
    pollJson(token, "database", "/api/performance/database", renderDatabase);
    pollJson(token, "slow", "/api/performance/slow-queries?min_ms=100", renderSlow);
    pollJson(token, "cache", "/api/performance/cache", renderCache);
    poll("chart", () => loadChart(token));
    setupExport(token);
    window.dmsAdmin = { drop: () => live.drop(), schedule: SCHEDULE, loadChart: () => loadChart(token) };
  });
})();
