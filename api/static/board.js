// The restaurant's live order board: REST for the snapshot, `restaurant:RID` events for changes,
// `driver:DID` for the positions of orders out for delivery.
"use strict";

(function () {
  const { el, $, api, liveClient, boot, showMessage, age } = window.dms;
  const ACTIVE = ["pending", "confirmed", "preparing", "ready", "delivering"];
  const DONE = ["delivered", "cancelled"];
  const DONE_SHOWN = 10;
  const PAGE_SIZE = 200;
  const MAX_PAGES = 5; // per active status; a board with more than 1,000 open orders per column is a bug elsewhere

  let orders = new Map(); // order id -> order (REST shape; fields from events merged in by version)
  const positions = new Map(); // driver id -> latest location data
  let live = null;
  let token = "";
  let channel = "";
  let restaurantId = "";
  let loading = null; // the running snapshot load, if any
  let duringLoad = null; // updates that arrived while it ran, applied on top of it
  let loads = 0;
  let renderQueued = false;

  function toOrder(data, ts) {
    return {
      id: data.order_id, restaurant_id: data.restaurant_id, status: data.status, driver_id: data.driver_id,
      version: data.version, total_amount: data.total_amount, updated_at: data.updated_at || ts,
    };
  }

  // Events can overtake a snapshot or repeat after a reconnect; the order's version decides.
  function merge(map, update) {
    const current = map.get(update.id);
    if (current && current.version > update.version) return false;
    map.set(update.id, { created_at: update.updated_at, ...(current || {}), ...update });
    return true;
  }

  async function listStatus(status, pages, limit) {
    const found = [];
    let cursor = null;
    for (let page = 0; page < pages; page += 1) {
      const query = new URLSearchParams({ restaurant_id: restaurantId, status, limit: String(limit) });
      if (cursor) query.set("cursor", cursor);
      const body = await api(token, "/api/orders?" + query.toString());
      found.push(...body.items);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return found;
  }

  function reload() {
    if (loading) return loading;
    duringLoad = [];
    loads += 1;
    loading = (async () => {
      try {
        const lists = await Promise.all([
          ...ACTIVE.map((status) => listStatus(status, MAX_PAGES, PAGE_SIZE)),
          ...DONE.map((status) => listStatus(status, 1, DONE_SHOWN)),
        ]);
        const fresh = new Map();
        for (const order of lists.flat()) merge(fresh, order);
        for (const update of duringLoad) merge(fresh, update);
        orders = fresh;
        showMessage("");
      } catch (error) {
        showMessage("Could not load orders: " + error.message);
      } finally {
        loading = null;
        duringLoad = null;
        queueRender();
      }
    })();
    return loading;
  }

  async function fillDetails(orderId) {
    try {
      const order = await api(token, "/api/orders/" + encodeURIComponent(orderId));
      if (merge(orders, order)) queueRender();
    } catch (_) {
      // The card already shows what the event said; details are a nicety.
    }
  }

  function onEvent(frame) {
    if (frame.event === "driver.location") {
      positions.set(frame.data.driver_id, frame.data);
      updateDriverText(frame.data.driver_id);
      return;
    }
    if (!frame.event.startsWith("order.") || !frame.data || !frame.data.order_id) return;
    const update = toOrder(frame.data, frame.ts);
    if (duringLoad) duringLoad.push(update);
    const known = orders.has(update.id) && orders.get(update.id).items;
    if (merge(orders, update)) queueRender();
    if (!known) fillDetails(update.id);
  }

  // -- rendering -----------------------------------------------------------------------------------
  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    queueMicrotask(() => {
      renderQueued = false;
      render();
    });
  }

  function driverText(driverId) {
    const where = positions.get(driverId);
    if (!where) return "driver " + driverId.slice(0, 8) + ": no position yet";
    return "driver " + driverId.slice(0, 8) + ": " + Number(where.lat).toFixed(5) + ", " +
      Number(where.lng).toFixed(5);
  }

  function updateDriverText(driverId) {
    for (const node of document.querySelectorAll("[data-driver]")) {
      if (node.dataset.driver !== driverId) continue;
      node.querySelector(".where").textContent = driverText(driverId);
      const when = node.querySelector("[data-since]");
      const where = positions.get(driverId);
      if (where) {
        when.dataset.since = where.recorded_at;
        when.textContent = age(where.recorded_at);
      }
    }
  }

  function card(order) {
    const items = el("ul", { class: "items" });
    for (const item of order.items || []) items.append(el("li", { text: item.quantity + " × " + item.name }));
    const node = el("li", { class: "card status-" + order.status, "data-order-id": order.id,
                            "data-status": order.status, "data-version": String(order.version) },
      el("div", { class: "card-head" },
        el("span", { class: "short", text: "#" + order.id.slice(0, 8) }),
        el("span", { class: "total", text: order.total_amount })),
      order.customer_name ? el("div", { class: "customer", text: order.customer_name }) : null,
      items,
      el("div", { class: "meta" }, DONE.includes(order.status) ? order.status + " · " : "",
        el("span", { "data-since": order.updated_at, text: age(order.updated_at) })));
    if (order.status === "delivering" && order.driver_id) {
      const where = positions.get(order.driver_id);
      node.append(el("div", { class: "driver", "data-driver": order.driver_id },
        el("span", { class: "where", text: driverText(order.driver_id) }), " · ",
        el("span", { "data-since": where ? where.recorded_at : "", text: where ? age(where.recorded_at) : "" })));
    }
    return node;
  }

  function render() {
    const columns = { pending: [], confirmed: [], preparing: [], ready: [], delivering: [], done: [] };
    for (const order of orders.values()) {
      (columns[DONE.includes(order.status) ? "done" : order.status] || []).push(order);
    }
    for (const list of Object.values(columns)) {
      list.sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
    }
    columns.done.sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)));
    columns.done = columns.done.slice(0, DONE_SHOWN);
    for (const [name, list] of Object.entries(columns)) {
      $('[data-cards="' + name + '"]').replaceChildren(...list.map(card));
      $('[data-count="' + name + '"]').textContent = String(list.length);
    }
    followDrivers(columns.delivering);
  }

  function followDrivers(delivering) {
    const wanted = new Set(delivering.map((order) => order.driver_id).filter(Boolean));
    for (const driverId of wanted) {
      const name = "driver:" + driverId;
      if (!live.channels.has(name)) {
        live.subscribe(name, onEvent, { recover: false });
        api(token, "/api/drivers/" + encodeURIComponent(driverId) + "/location")
          .then((where) => {
            if (!positions.has(driverId)) positions.set(driverId, where);
            updateDriverText(driverId);
          })
          .catch(() => {});
      }
    }
    for (const name of [...live.channels.keys()]) {
      if (name.startsWith("driver:") && !wanted.has(name.slice(7))) live.unsubscribe(name);
    }
  }

  function tickAges() {
    for (const node of document.querySelectorAll("[data-since]")) {
      if (node.dataset.since) node.textContent = age(node.dataset.since);
    }
  }

  boot((bearer, claims) => {
    token = bearer;
    const fromQuery = new URLSearchParams(location.search).get("restaurant_id");
    restaurantId = claims.restaurant_id || fromQuery || sessionStorage.getItem("dms.restaurant") || "";
    if (!restaurantId) {
      showMessage("Admins: open this page with ?restaurant_id=… or paste a restaurant id with the token.");
      return;
    }
    channel = "restaurant:" + restaurantId;
    // The header names the restaurant (its id stays in the tooltip); without an answer it keeps the id.
    api(token, "/api/restaurants/" + encodeURIComponent(restaurantId)).then((restaurant) => {
      const subject = $("#subject");
      subject.textContent = claims.role + " · " + restaurant.name;
      subject.title = restaurantId;
      subject.dataset.restaurantName = restaurant.name;
    }).catch(() => {});
    live = liveClient(token, showMessage);
    live.on("subscribed", (frame, hadSince) => {
      // A first subscribe or a `since` past retention: only a fresh snapshot is complete.
      if (frame.channel === channel && !frame.recovered) reload();
      if (frame.channel === channel && hadSince && frame.recovered) showMessage("");
    });
    live.on("error", (frame) => {
      if (frame.channel === channel) showMessage("Live updates refused: " + frame.message);
    });
    live.subscribe(channel, onEvent);
    // Without a gateway the board still shows the snapshot; the socket catches up when it can.
    setTimeout(() => { if (loads === 0) reload(); }, 2000);
    setInterval(tickAges, 1000);
    window.dmsBoard = {
      drop: () => live.drop(),
      lastEventId: () => live.lastId(channel),
      orderIds: () => [...orders.keys()],
      loads: () => loads,
    };
  });
})();
