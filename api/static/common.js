// Shared by the pages: token handling, REST calls, a reconnecting WebSocket, small DOM helpers.
// DOM nodes only, never HTML strings: the pages run under `require-trusted-types-for 'script'`.
"use strict";

(function () {
  const TOKEN_KEY = "dms.token";
  const page = document.body.dataset.page;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function $(selector) {
    return document.querySelector(selector);
  }

  // -- token: from the fragment (then removed from the address bar) or the paste box, kept per tab ----
  function decodeClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    } catch (_) {
      return null;
    }
  }

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const fromFragment = fragment.get("token");
    if (fromFragment) {
      sessionStorage.setItem(TOKEN_KEY, fromFragment.trim());
      fragment.delete("token");
      const rest = fragment.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
  }

  function showMessage(text) {
    const box = $("#message");
    box.textContent = text || "";
    box.hidden = !text;
  }

  // -- connection indicator --------------------------------------------------------------------------
  function setIndicator(state, detail) {
    const badge = $("#conn");
    badge.className = "conn conn-" + state;
    badge.textContent = detail ? state + " · " + detail : state;
    badge.dataset.state = state;
  }

  // -- REST ------------------------------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || "HTTP " + status);
      this.status = status;
      this.code = body && body.error && body.error.code;
    }
  }

  // `options.json` sends a JSON body (and its Content-Type); other options go to fetch as they are.
  async function api(token, path, options) {
    const { json, ...rest } = options || {};
    const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      ...rest,
      body: json !== undefined ? JSON.stringify(json) : rest.body,
      headers,
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) throw new HttpError(response.status, body);
    return body;
  }

  // -- a WebSocket that reconnects with exponential backoff, jitter and per-channel `since` --------------
  // `channels` maps a channel to {since: bool}; the client remembers the last event id per channel
  // and resubscribes with it, so the gateway replays what was missed (at least once; callers dedupe).
  class LiveSocket {
    constructor(url, token, handlers) {
      this.url = url;
      this.token = token;
      this.handlers = handlers;
      this.channels = new Map(); // channel -> {recover: bool, lastId: number|null}
      this.ws = null;
      this.attempt = 0;
      this.timer = null;
      this.stopped = false;
      this.refs = 0;
      this.subscribeRefs = new Map(); // ref -> channel, to tell which subscribe an error answers
      window.addEventListener("online", () => this.reconnectNow());
      window.addEventListener("offline", () => setIndicator("offline", "no network"));
    }

    start() {
      this.connect();
    }

    async connect() {
      clearTimeout(this.timer);
      if (this.stopped) return;
      const separator = this.url.includes("?") ? "&" : "?";
      let ws;
      try {
        // A single-use connect ticket, not the bearer token, goes in the URL (proxies log URLs).
        const { ticket } = await api(this.token, "/api/realtime/ticket", { method: "POST" });
        if (this.stopped) return;
        ws = new WebSocket(this.url + separator + "ticket=" + encodeURIComponent(ticket));
      } catch (_) {
        this.scheduleReconnect();
        return;
      }
      this.ws = ws;
      ws.onmessage = (message) => this.onFrame(ws, message.data);
      ws.onclose = (event) => this.onClose(ws, event);
    }

    onFrame(ws, text) {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (_) {
        return;
      }
      if (frame.type === "welcome") {
        this.attempt = 0;
        setIndicator("connected");
        for (const channel of this.channels.keys()) this.sendSubscribe(channel);
      } else if (frame.type === "subscribed") {
        this.subscribeRefs.delete(frame.ref);
        const state = this.channels.get(frame.channel);
        if (!state) return;
        const hadSince = state.recover && state.lastId !== null;
        // Not recovered (first subscribe, or `since` past retention): live events start after this id.
        if (!frame.recovered) state.lastId = frame.last_event_id;
        if (this.handlers.subscribed) this.handlers.subscribed(frame, hadSince);
      } else if (frame.type === "event") {
        const state = this.channels.get(frame.channel);
        if (!state) return;
        if (frame.id !== null && state.lastId !== null && frame.id <= state.lastId) return; // seen already
        if (frame.id !== null) state.lastId = frame.id;
        this.handlers.event(frame);
      } else if (frame.type === "error") {
        frame.channel = this.subscribeRefs.get(frame.ref) || null;
        this.subscribeRefs.delete(frame.ref);
        if (this.handlers.error) this.handlers.error(frame);
      }
    }

    onClose(ws, event) {
      if (ws !== this.ws) return;
      this.ws = null;
      if (event.code === 4001) {
        this.stopped = true;
        setIndicator("offline", "token expired");
        if (this.handlers.fatal) this.handlers.fatal("The token expired. Paste a new one.");
        return;
      }
      this.scheduleReconnect();
    }

    scheduleReconnect() {
      if (this.stopped) return;
      this.attempt += 1;
      // 0.5 s, 1 s, 2 s … capped at 30 s; "full jitter" halves the herd when a gateway drains.
      const ceiling = Math.min(30000, 500 * 2 ** (this.attempt - 1));
      const delay = ceiling / 2 + Math.random() * (ceiling / 2);
      const offline = navigator.onLine === false || this.attempt > 5;
      setIndicator(offline ? "offline" : "reconnecting", "retry in " + (delay / 1000).toFixed(1) + " s");
      // No attempt while the browser knows it is offline (it would only fail and log an error);
      // the "online" event reconnects at once.
      this.timer = setTimeout(() => (navigator.onLine === false ? this.scheduleReconnect() : this.connect()), delay);
    }

    reconnectNow() {
      if (this.ws || this.stopped) return;
      this.attempt = 0;
      this.connect();
    }

    sendSubscribe(channel) {
      const state = this.channels.get(channel);
      const frame = { type: "subscribe", channel, ref: "s" + ++this.refs };
      this.subscribeRefs.set(frame.ref, channel);
      if (state.recover && state.lastId !== null) frame.since = state.lastId;
      this.send(frame);
    }

    send(frame) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
    }

    subscribe(channel, { recover = true } = {}) {
      if (this.channels.has(channel)) return;
      this.channels.set(channel, { recover, lastId: null });
      this.sendSubscribe(channel);
    }

    unsubscribe(channel) {
      if (!this.channels.delete(channel)) return;
      this.send({ type: "unsubscribe", channel, ref: "u" + ++this.refs });
    }

    lastId(channel) {
      const state = this.channels.get(channel);
      return state ? state.lastId : null;
    }

    resetChannel(channel) {
      const state = this.channels.get(channel);
      if (state) state.lastId = null;
    }

    // Drop the socket as a network failure would; the usual backoff brings it back.
    drop() {
      if (this.ws) this.ws.close(4000, "dropped by the page");
    }
  }

  // -- start-up: find a token, or show the paste box ----------------------------------------------------
  function boot(start) {
    const form = $("#token-form");
    const forget = $("#forget");
    forget.addEventListener("click", () => {
      forgetToken();
      location.reload();
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      const extra = $("#restaurant-input");
      if (extra && extra.value.trim()) sessionStorage.setItem("dms.restaurant", extra.value.trim());
      location.reload();
    });
    const token = takeToken();
    const claims = token ? decodeClaims(token) : null;
    if (!token || !claims) {
      if (token) showMessage("That token cannot be read. Paste another one.");
      forgetToken();
      form.hidden = false;
      setIndicator("offline", "no token");
      return;
    }
    forget.hidden = false;
    $("#subject").textContent = claims.role + (claims.restaurant_id ? " · " + claims.restaurant_id : "");
    $("#main").hidden = false;
    start(token, claims);
  }

  function age(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (!Number.isFinite(seconds)) return "?";
    if (seconds < 90) return seconds + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  window.dms = { el, $, api, HttpError, LiveSocket, boot, showMessage, setIndicator, age, page,
                 gatewayUrl: document.body.dataset.gatewayUrl };
})();
