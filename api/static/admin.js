// The admin dashboard. First what admins watch: live numbers and their history (the API's minute
// samples, extended by the `admin:connections` frames every 2 s). Then dispatch: the fleet (`drivers`,
// with presence: online / stale / offline / on break), a map that fits the main cluster, and orders
// waiting for a driver (`orders`), a page at a time. Over REST: each source once at start and after
// a reconnect, then only the figures that have no channel, slowly (SCHEDULE), and not while the tab
// is hidden: a page left open all day costs about 110 requests an hour of the admin's 1,000. Each
// panel says "unavailable" on its own when its source fails.
"use strict";

(function () {
  const { el, $, api, liveClient, boot, showMessage, age } = window.dms;
  const ROLES = ["admin", "restaurant", "driver", "demo"];
  // Milliseconds between polls of what no channel carries.
  const SCHEDULE = { database: 60000, cache: 120000, slow: 300000, chart: 300000 };
  const ACTIVE = ["pending", "confirmed", "preparing", "ready", "delivering"];
  const ASSIGNABLE = ["confirmed", "preparing", "ready"];
  const STATUS_ORDER = { online: 0, stale: 1, on_break: 2, offline: 3 };
  // A tile server's URL template ({z}/{x}/{y}) when MAP_TILE_URL is configured; no tiles otherwise.
  const TILE_URL = (document.currentScript && document.currentScript.dataset.mapTileUrl) || "";
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
    if (Array.isArray(body.history)) {
      live.history = body.history;
      renderLive();
    }
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

  // -- live numbers and their history: minute samples over REST, extended by `admin:connections` ------
  const RANGES = { "1h": 3600000, "24h": 86400000 };
  const METRICS = {
    connections: { unit: "", digits: 0 },
    deliveries_per_s: { unit: "/s", digits: 1 },
    delivery_p95_ms: { unit: " ms", digits: 1 },
    orders_per_min: { unit: "", digits: 1 },
    api_p95_ms: { unit: " ms", digits: 1 },
    api_error_rate: { unit: " %", digits: 2, scale: 100 },
  };
  const LIVE_MAX = 1800; // an hour of frames every 2 s
  const live = { range: "1h", history: [], frames: [] }; // frames: {at, connections, gateways, deliveries_per_s, delivery_p95_ms}

  function formatValue(name, value) {
    if (value === null || value === undefined) return "–";
    const spec = METRICS[name];
    return (value * (spec.scale || 1)).toFixed(spec.digits) + spec.unit;
  }

  function clockLabel(ms) {
    const d = new Date(ms);
    return live.range === "1h" ? d.toTimeString().slice(0, 5) : d.toTimeString().slice(0, 5) + " " + d.toDateString().slice(4, 10);
  }

  // The points of one series: stored samples, then live frames newer than the last sample.
  function seriesOf(name, pick) {
    const history = live.history.map((p) => ({ at: Date.parse(p.at), value: pick(p), source: "hist" }))
      .filter((p) => p.value !== null && p.value !== undefined);
    const after = history.length ? history[history.length - 1].at : 0;
    const frames = live.frames.filter((f) => f.at > after).map((f) => ({ at: f.at, value: pick(f), source: "live" }))
      .filter((p) => p.value !== null && p.value !== undefined);
    return history.concat(frames);
  }

  function drawSpark(figure, name, lines) {
    const W = 320, H = 120, left = 34, right = 6, top = 8, bottom = 18;
    const now = Date.now(), from = now - RANGES[live.range];
    const all = lines.flatMap((line) => line.points);
    const max = Math.max(1e-9, ...all.map((p) => p.value));
    const nice = max <= 0 ? 1 : max * 1.1;
    const x = (at) => left + (W - left - right) * Math.max(0, (at - from) / (now - from));
    const y = (v) => top + (H - top - bottom) * (1 - v / nice);
    const nodes = [
      svg("line", { class: "axis", x1: left, y1: H - bottom, x2: W - right, y2: H - bottom }),
      svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }),
      svg("text", { class: "axis-label y", x: left - 4, y: top + 8, text: formatValue(name, nice).replace(/ (ms|%)$/, "") }),
      svg("text", { class: "axis-label y", x: left - 4, y: H - bottom, text: "0" }),
      svg("text", { class: "axis-label start", x: left, y: H - 4, text: clockLabel(from) }),
      svg("text", { class: "axis-label end", x: W - right, y: H - 4, text: "now" }),
    ];
    if (!all.length) nodes.push(svg("text", { class: "legend", x: left + 10, y: H / 2, text: "no samples yet" }));
    lines.forEach((line, index) => {
      const points = line.points.filter((p) => p.at >= from);
      if (!points.length) return;
      nodes.push(svg("polyline", { class: "spark-line series-" + index + (line.minor ? " minor" : ""),
        "data-series": line.key, points: points.map((p) => x(p.at).toFixed(1) + "," + y(p.value).toFixed(1)).join(" ") }));
      if (line.minor) return;
      for (const p of points) {
        nodes.push(svg("circle", { class: "pt " + p.source, cx: x(p.at).toFixed(1), cy: y(p.value).toFixed(1), r: 1.8,
          "data-at": new Date(p.at).toISOString(), "data-value": String(p.value) },
          svg("title", { text: clockLabel(p.at) + ": " + formatValue(name, p.value) })));
      }
    });
    figure.querySelector("svg").replaceChildren(...nodes);
    const last = lines.length && lines[0].points.length ? lines[0].points[lines[0].points.length - 1].value : null;
    figure.querySelector(".now").textContent = formatValue(name, last);
  }

  function renderLive() {
    for (const figure of document.querySelectorAll("#panel-live .tile")) {
      const name = figure.dataset.metric;
      const lines = [{ key: name, points: seriesOf(name, (p) => p[name]) }];
      if (name === "connections") {
        const ids = new Set();
        for (const p of live.history) for (const id of Object.keys(p.gateways || {})) ids.add(id);
        for (const f of live.frames) for (const id of Object.keys(f.gateways || {})) ids.add(id);
        for (const id of [...ids].sort()) {
          lines.push({ key: "gateway:" + id, minor: true, points: seriesOf(name, (p) => (p.gateways || {})[id] ?? null) });
        }
        const latest = live.frames.length ? live.frames[live.frames.length - 1].gateways : null;
        $("#per-gateway").textContent = latest
          ? Object.entries(latest).sort().map(([id, n]) => id + ": " + n).join(" · ") : "";
      }
      drawSpark(figure, name, lines);
    }
    stamp("live");
  }

  function liveFrame(body) {
    const instances = body.instances || [];
    const p95s = instances.map((i) => i.delivery_p95_ms).filter((v) => typeof v === "number");
    live.frames.push({
      at: Date.now(), connections: body.total,
      gateways: Object.fromEntries(instances.map((i) => [i.id, i.connections])),
      deliveries_per_s: instances.reduce((sum, i) => sum + Number(i.messages_out_per_s || 0), 0),
      delivery_p95_ms: p95s.length ? Math.max(...p95s) : null,
    });
    if (live.frames.length > LIVE_MAX) live.frames.splice(0, live.frames.length - LIVE_MAX);
    renderLive();
  }

  function setupRange(refresh) {
    for (const button of document.querySelectorAll(".range-choice")) {
      button.addEventListener("click", () => {
        live.range = button.dataset.range;
        for (const other of document.querySelectorAll(".range-choice")) {
          other.setAttribute("aria-pressed", String(other === button));
        }
        refresh();
      });
    }
  }

  // -- the fleet: drivers, their positions and active orders, live from `drivers` and `orders` ------
  const fleet = new Map(); // driver id -> {id, display_name, status, last_seen_at, last_location, active_order_ids}
  const awaiting = new Map(); // order id -> order event data (assignable and without a driver)
  // Orders an event changed while the waiting list was being read: the read must not undo them.
  let changedWhileLoading = null;
  const chosen = new Map(); // order id -> driver id picked in its select, kept across re-renders
  const rowErrors = new Map(); // order id -> last assignment error
  const staleWarned = new Set(); // order ids whose Assign already warned about a stale driver
  const restaurants = new Map(); // restaurant id -> name
  const pages = { awaiting: 0 };
  const AWAITING_PAGE = 12;
  let renderTimer = null;

  function scheduleRender() {
    if (renderTimer !== null) return;
    renderTimer = setTimeout(() => {
      renderTimer = null;
      renderFleet();
    }, 200); // a burst of positions is drawn once
  }

  function driverName(driver) {
    return driver.display_name || "driver " + short(driver.id);
  }

  function restaurantName(id) {
    return restaurants.get(id) || short(id);
  }

  function seenText(driver) {
    const seen = driver.last_seen_at || (driver.last_location && driver.last_location.recorded_at);
    return seen ? age(seen) : "never";
  }

  function sortedDrivers() {
    return [...fleet.values()].sort((a, b) =>
      (STATUS_ORDER[a.status] ?? 4) - (STATUS_ORDER[b.status] ?? 4) || driverName(a).localeCompare(driverName(b)));
  }

  function renderFleet() {
    const drivers = sortedDrivers();
    $("#drivers-count").textContent = String(drivers.length);
    $("#drivers tbody").replaceChildren(...drivers.map((d) => {
      const where = d.last_location;
      return el("tr", { "data-driver-id": d.id, "data-status": d.status },
        el("td", { title: d.id }, driverName(d)),
        el("td", {}, el("span", { class: "badge status-" + d.status, text: d.status.replace("_", " ") })),
        el("td", { class: "seen", title: d.last_seen_at || "", text: seenText(d) }),
        el("td", { class: "num position", text: where ? where.lat.toFixed(5) + ", " + where.lng.toFixed(5) : "–" }),
        el("td", { class: "active-orders", "data-count": String(d.active_order_ids.length) },
          d.active_order_ids.length ? d.active_order_ids.map(short).join(", ") : "–"));
    }));
    renderMap(drivers);
    stamp("drivers");
  }

  // -- the map: Web Mercator, bounds around the main cluster, outliers listed apart ------------------
  const MAP_W = 560, MAP_H = 380, MAP_PAD = 24, CLUSTER_PX = 16;
  const mercX = (lng) => (lng + 180) / 360;
  const mercY = (lat) => {
    const phi = (Math.max(-85, Math.min(85, lat)) * Math.PI) / 180;
    return (1 - Math.log(Math.tan(Math.PI / 4 + phi / 2)) / Math.PI) / 2;
  };
  const unmercY = (y) => (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI;
  const median = (values) => {
    const sorted = [...values].sort((a, b) => a - b);
    return sorted.length ? sorted[Math.floor(sorted.length / 2)] : 0;
  };
  const KM_PER_WORLD = 40075; // at the equator; scaled by the latitude's cosine below

  // The drivers an admin is looking at: those near the fleet's median position. The cut-off grows with
  // how spread the fleet is (4x the median distance, at least 25 km), so a city fits and a stray does not.
  function mainCluster(placed) {
    const mx = median(placed.map((d) => mercX(d.last_location.lng)));
    const my = median(placed.map((d) => mercY(d.last_location.lat)));
    const kmPerUnit = KM_PER_WORLD * Math.cos((unmercY(my) * Math.PI) / 180);
    const km = (d) => Math.hypot(mercX(d.last_location.lng) - mx, mercY(d.last_location.lat) - my) * kmPerUnit;
    const cutoff = Math.max(25, 4 * median(placed.map(km)));
    const inside = [], outside = [];
    for (const d of placed) (km(d) <= cutoff ? inside : outside).push({ driver: d, km: km(d) });
    return { inside: inside.map((e) => e.driver), outside: outside.sort((a, b) => b.km - a.km) };
  }

  // Label boxes placed greedily beside their dot (right, left, above, below); a label that fits
  // nowhere is left out (its dot keeps its title), so labels never overprint each other or dots.
  function placeLabels(marks) {
    const taken = marks.map((m) => ({ x1: m.x - m.r, y1: m.y - m.r, x2: m.x + m.r, y2: m.y + m.r }));
    const overlaps = (a) => taken.some((b) => a.x1 < b.x2 && b.x1 < a.x2 && a.y1 < b.y2 && b.y1 < a.y2);
    const labels = [];
    for (const m of marks) {
      if (m.key === "cluster" || m.key === "offmap") continue; // no label of their own; their boxes stay reserved
      const w = m.text.length * 5.6 + 2, h = 11;
      const spots = [[m.x + m.r + 3, m.y - h / 2], [m.x - m.r - 3 - w, m.y - h / 2], [m.x - w / 2, m.y - m.r - 3 - h],
                     [m.x - w / 2, m.y + m.r + 3]];
      for (const [lx, ly] of spots) {
        const box = { x1: lx, y1: ly, x2: lx + w, y2: ly + h };
        if (box.x1 < 0 || box.y1 < 0 || box.x2 > MAP_W || box.y2 > MAP_H || overlaps(box)) continue;
        taken.push(box);
        labels.push(svg("text", { class: "dot-label", x: lx.toFixed(1), y: (ly + h - 2).toFixed(1), "data-for": m.key,
          text: m.text }));
        break;
      }
    }
    return labels;
  }

  function tileLayer(view) {
    const template = TILE_URL;
    if (!template) return [];
    const z = Math.max(0, Math.min(19, Math.round(Math.log2(view.scale / 256))));
    const n = 2 ** z, size = view.scale / n;
    const tiles = [];
    for (let tx = Math.floor(view.west * n); tx <= Math.floor(view.east * n); tx++) {
      for (let ty = Math.floor(view.north * n); ty <= Math.floor(view.south * n); ty++) {
        if (ty < 0 || ty >= n) continue;
        const href = template.replace("{z}", z).replace("{x}", ((tx % n) + n) % n).replace("{y}", ty);
        tiles.push(svg("image", { class: "tile-img", href, x: ((tx / n - view.west) * view.scale).toFixed(1),
          y: ((ty / n - view.north) * view.scale).toFixed(1), width: size.toFixed(1), height: size.toFixed(1) }));
      }
    }
    return tiles;
  }

  function renderMap(drivers) {
    const placed = drivers.filter((d) => d.last_location);
    const map = $("#fleet-map");
    const outliersBox = $("#fleet-outliers");
    if (!placed.length) {
      $("#fleet-grid").replaceChildren(svg("text", { class: "map-label", x: MAP_W / 2 - 50, y: MAP_H / 2, text: "no positions yet" }));
      for (const id of ["#fleet-dots", "#fleet-labels", "#fleet-tiles"]) $(id).replaceChildren();
      outliersBox.hidden = true;
      return;
    }
    const { inside, outside } = mainCluster(placed);
    const xs = inside.map((d) => mercX(d.last_location.lng)), ys = inside.map((d) => mercY(d.last_location.lat));
    const minSpan = 1.5 / KM_PER_WORLD; // at least ~1.5 km across
    const spanX = Math.max(Math.max(...xs) - Math.min(...xs), minSpan), spanY = Math.max(Math.max(...ys) - Math.min(...ys), minSpan);
    const scale = Math.min((MAP_W - 2 * MAP_PAD) / spanX, (MAP_H - 2 * MAP_PAD) / spanY); // px per world unit
    const cx = (Math.min(...xs) + Math.max(...xs)) / 2, cy = (Math.min(...ys) + Math.max(...ys)) / 2;
    const view = { scale, west: cx - MAP_W / 2 / scale, east: cx + MAP_W / 2 / scale,
                   north: cy - MAP_H / 2 / scale, south: cy + MAP_H / 2 / scale };
    const bounds = { south: unmercY(view.south), north: unmercY(view.north), west: view.west * 360 - 180,
                     east: view.east * 360 - 180 };
    Object.assign(map.dataset, Object.fromEntries(Object.entries(bounds).map(([k, v]) => [k, v.toFixed(5)])));
    $("#fleet-bounds").textContent = bounds.south.toFixed(3) + "°, " + bounds.west.toFixed(3) + "° … " +
      bounds.north.toFixed(3) + "°, " + bounds.east.toFixed(3) + "° · " +
      ((view.east - view.west) * KM_PER_WORLD * Math.cos((unmercY(cy) * Math.PI) / 180)).toFixed(1) + " km across";
    $("#fleet-tiles").replaceChildren(...tileLayer(view));
    const lines = [];
    for (let i = 1; i < 4; i++) {
      lines.push(svg("line", { class: "map-grid", x1: (MAP_W * i) / 4, y1: 0, x2: (MAP_W * i) / 4, y2: MAP_H }));
      lines.push(svg("line", { class: "map-grid", x1: 0, y1: (MAP_H * i) / 4, x2: MAP_W, y2: (MAP_H * i) / 4 }));
    }
    $("#fleet-grid").replaceChildren(...lines);

    // Clusters: a driver joins the first cluster whose centre is within CLUSTER_PX, else starts one.
    const clusters = [];
    for (const d of inside) {
      const px = (mercX(d.last_location.lng) - view.west) * scale, py = (mercY(d.last_location.lat) - view.north) * scale;
      const near = clusters.find((c) => Math.hypot(c.x - px, c.y - py) <= CLUSTER_PX);
      if (near) near.members.push(d);
      else clusters.push({ x: px, y: py, members: [d] });
    }
    const marks = [];
    $("#fleet-dots").replaceChildren(...clusters.map((c) => {
      if (c.members.length === 1) {
        const d = c.members[0];
        marks.push({ x: c.x, y: c.y, r: 6, text: driverName(d), key: d.id });
        return svg("circle", { class: "dot status-" + d.status, cx: c.x.toFixed(1), cy: c.y.toFixed(1), r: 6, "data-driver-id": d.id },
          svg("title", { text: driverName(d) + " · " + d.status.replace("_", " ") + " · seen " + seenText(d) }));
      }
      const r = Math.min(16, 8 + 2 * Math.log2(c.members.length));
      const names = c.members.map((d) => driverName(d) + " (" + d.status.replace("_", " ") + ")").sort();
      marks.push({ x: c.x, y: c.y, r, text: c.members.length + " drivers", key: "cluster" });
      return svg("g", { class: "cluster", "data-count": String(c.members.length),
                        "data-driver-ids": c.members.map((d) => d.id).join(" ") },
        svg("circle", { class: "dot cluster-dot", cx: c.x.toFixed(1), cy: c.y.toFixed(1), r: r.toFixed(1) }),
        svg("text", { class: "cluster-count", x: c.x.toFixed(1), y: (c.y + 3.5).toFixed(1), text: String(c.members.length) }),
        svg("title", { text: names.join("\n") }));
    }));
    // Outliers keep a small marker on the map's edge, in their direction (the list says where they are).
    const edge = (v, max) => Math.max(5, Math.min(max - 5, v));
    $("#fleet-dots").append(...outside.map(({ driver: d }) => {
      const px = (mercX(d.last_location.lng) - view.west) * scale, py = (mercY(d.last_location.lat) - view.north) * scale;
      marks.push({ x: edge(px, MAP_W), y: edge(py, MAP_H), r: 4, text: "", key: "offmap" });
      return svg("circle", { class: "dot offmap status-" + d.status, cx: edge(px, MAP_W).toFixed(1),
                             cy: edge(py, MAP_H).toFixed(1), r: 4, "data-driver-id": d.id },
        svg("title", { text: driverName(d) + " · off the map · " + d.status.replace("_", " ") }));
    }));
    $("#fleet-labels").replaceChildren(...placeLabels(marks));
    outliersBox.hidden = !outside.length;
    outliersBox.querySelector("ul").replaceChildren(...outside.map(({ driver, km }) => el("li", { "data-driver-id": driver.id },
      el("b", { text: driverName(driver) }), " · " + driver.status.replace("_", " ") + " · " +
      driver.last_location.lat.toFixed(3) + ", " + driver.last_location.lng.toFixed(3) + " · " + Math.round(km) + " km away")));
  }

  // -- orders waiting for a driver, a page at a time (oldest first) -------------------------------
  function pager(name, count, size, redraw) {
    const box = $('[data-pager="' + name + '"]');
    const last = Math.max(0, Math.ceil(count / size) - 1);
    pages[name] = Math.min(pages[name], last);
    if (count <= size) {
      box.replaceChildren();
      return;
    }
    const prev = el("button", { type: "button", class: "page-prev", text: "‹", "aria-label": "previous page" });
    const next = el("button", { type: "button", class: "page-next", text: "›", "aria-label": "next page" });
    prev.disabled = pages[name] === 0;
    next.disabled = pages[name] === last;
    prev.addEventListener("click", () => { pages[name] -= 1; redraw(); });
    next.addEventListener("click", () => { pages[name] += 1; redraw(); });
    box.replaceChildren(prev, el("span", { class: "page-of", text: (pages[name] + 1) + " / " + (last + 1) }), next);
  }

  function renderAwaiting(token) {
    const orders = [...awaiting.values()].sort((a, b) => String(a.updated_at).localeCompare(String(b.updated_at)));
    $("#awaiting-count").textContent = String(orders.length);
    pager("awaiting", orders.length, AWAITING_PAGE, () => renderAwaiting(token));
    const shown = orders.slice(pages.awaiting * AWAITING_PAGE, (pages.awaiting + 1) * AWAITING_PAGE);
    const drivers = sortedDrivers().filter((d) => d.status !== "offline");
    $("#awaiting tbody").replaceChildren(...shown.map((order) => {
      const select = el("select", { "aria-label": "driver for order " + short(order.order_id) },
        el("option", { value: "", text: "choose a driver" }),
        ...drivers.map((d) => el("option", { value: d.id,
          text: driverName(d) + " · " + d.status.replace("_", " ") + " · " + d.active_order_ids.length + " active" })));
      select.value = chosen.get(order.order_id) || "";
      select.addEventListener("change", () => {
        chosen.set(order.order_id, select.value);
        staleWarned.delete(order.order_id);
      });
      const warned = staleWarned.has(order.order_id);
      const button = el("button", { type: "button", class: "assign" + (warned ? " confirm" : ""),
                                    text: warned ? "Assign anyway" : "Assign" });
      button.addEventListener("click", () => assign(token, order.order_id, select.value, button));
      const error = rowErrors.get(order.order_id);
      return el("tr", { "data-order-id": order.order_id, "data-status": order.status },
        el("td", { class: "short", title: order.order_id, text: short(order.order_id) }),
        el("td", { title: order.restaurant_id, text: restaurantName(order.restaurant_id) }),
        el("td", { text: order.status }),
        el("td", { class: "num", text: order.total_amount || "–" }),
        el("td", {}, select),
        el("td", {}, button, error ? el("span", { class: "row-error" + (warned ? " stale-warning" : ""), text: " " + error }) : null));
    }));
  }

  async function assign(token, orderId, driverId, button) {
    if (!driverId) {
      rowErrors.set(orderId, "choose a driver first");
      renderAwaiting(token);
      return;
    }
    const driver = fleet.get(driverId);
    // A stale driver's app has not been heard from: say so once, and assign on the second click.
    if (driver && driver.status === "stale" && !staleWarned.has(orderId)) {
      staleWarned.add(orderId);
      rowErrors.set(orderId, driverName(driver) + " is stale: last seen " + seenText(driver) + ". Assign anyway?");
      renderAwaiting(token);
      return;
    }
    button.disabled = true;
    try {
      const order = await api(token, "/api/orders/" + orderId + "/assign", { method: "POST", json: { driver_id: driverId } });
      rowErrors.delete(orderId);
      chosen.delete(orderId);
      staleWarned.delete(orderId);
      applyOrder(token, { order_id: order.id, restaurant_id: order.restaurant_id, status: order.status,
                          driver_id: order.driver_id, total_amount: order.total_amount, updated_at: order.updated_at });
    } catch (error) {
      staleWarned.delete(orderId);
      rowErrors.set(orderId, error.message + (error.code ? " (" + error.code + ")" : ""));
      renderAwaiting(token);
    }
  }

  // One order's new state (an event, or an assignment's answer): the waiting list and every
  // driver's active orders follow it.
  function applyOrder(token, data) {
    const waiting = ASSIGNABLE.includes(data.status) && !data.driver_id;
    const before = awaiting.has(data.order_id);
    if (changedWhileLoading) changedWhileLoading.add(data.order_id);
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
      driver = { id: data.driver_id, display_name: "", status: "offline", last_seen_at: null, last_location: null,
                 active_order_ids: [] };
      fleet.set(driver.id, driver);
    }
    if (frame.event === "driver.location") {
      driver.last_location = { lat: data.lat, lng: data.lng, recorded_at: data.recorded_at };
      driver.last_seen_at = frame.ts || new Date().toISOString();
      if (driver.status === "stale") driver.status = "online"; // a position is a sign of life
      scheduleRender();
    } else if (frame.event === "driver.status_changed") {
      driver.status = data.status;
      if (data.last_seen_at) driver.last_seen_at = data.last_seen_at;
      else if (data.status !== "stale") driver.last_seen_at = data.updated_at || driver.last_seen_at;
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

  async function loadRestaurants(token) {
    try {
      let cursor = null;
      for (let page = 0; page < 5; page++) {
        const body = await api(token, "/api/restaurants?limit=200" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
        for (const r of body.items) restaurants.set(r.id, r.name);
        cursor = body.next_cursor;
        if (!cursor) break;
      }
    } catch (error) {
      // Names are a nicety: the waiting list shows id prefixes without them.
    }
  }

  async function loadAwaiting(token) {
    const changed = new Set();
    changedWhileLoading = changed;
    try {
      const pagesRead = await Promise.all(ASSIGNABLE.map((status) => api(token, "/api/orders?limit=200&status=" + status)));
      // An event newer than the read keeps its word: an order it added stays, one it removed stays out.
      const live = new Map([...changed].filter((id) => awaiting.has(id)).map((id) => [id, awaiting.get(id)]));
      awaiting.clear();
      for (const order of pagesRead.flatMap((body) => body.items)) {
        if (!order.driver_id && !changed.has(order.id)) {
          awaiting.set(order.id, { order_id: order.id, restaurant_id: order.restaurant_id, status: order.status,
                                   driver_id: null, total_amount: order.total_amount, updated_at: order.updated_at });
        }
      }
      for (const [id, data] of live) awaiting.set(id, data);
      renderAwaiting(token);
    } catch (error) {
      $("#awaiting tbody").replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "unavailable",
        text: "unavailable · " + error.message })));
    } finally {
      if (changedWhileLoading === changed) changedWhileLoading = null;
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
    const socket = liveClient(token, showMessage);
    // After a reconnect the fleet and the waiting list are read again: positions are not replayed.
    socket.on("subscribed", (frame) => {
      if (frame.channel === "drivers" && fleetLoads++ > 0) loadFleet(token);
      if (frame.channel === "orders" && !frame.recovered && fleetLoads > 1) loadAwaiting(token);
    });
    socket.subscribe("admin:connections", (frame) => {
      renderConnections(frame.data);
      liveFrame(frame.data);
    }, { recover: false });
    socket.subscribe("drivers", (frame) => applyDriverEvent(token, frame), { recover: false });
    socket.subscribe("orders", (frame) => { if (frame.data && frame.data.order_id) applyOrder(token, frame.data); });
    Promise.all([loadFleet(token), loadRestaurants(token)]).then(() => loadAwaiting(token));
    setInterval(() => { if (!document.hidden && fleet.size) renderFleet(); }, 10000); // ages; no request
    // One request a minute feeds both the database panel and the history charts.
    const database = () => "/api/performance/database?timeRange=" + live.range;
    poll("database", () => api(token, database()).then(renderDatabase).catch((error) => {
      unavailable("database", error);
      unavailable("alerts", error);
    }));
    setupRange(() => api(token, database()).then(renderDatabase).catch((error) => unavailable("database", error)));
    setInterval(() => { if (!document.hidden) renderLive(); }, 30000); // the time axis moves; no request
    pollJson(token, "slow", "/api/performance/slow-queries?min_ms=100", renderSlow);
    pollJson(token, "cache", "/api/performance/cache", renderCache);
    poll("chart", () => loadChart(token));
    setupExport(token);
    window.dmsAdmin = { drop: () => socket.drop(), schedule: SCHEDULE, loadChart: () => loadChart(token),
                        refresh: () => api(token, database()).then(renderDatabase), renderFleet };
  });
})();
