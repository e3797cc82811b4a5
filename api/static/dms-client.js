// dms-client.js: the browser client of the dms WebSocket protocol (GET /api/asyncapi.json).
// An ES module with no dependencies and no build step:
//
//   import { DmsClient } from "/static/dms-client.js";
//   const client = new DmsClient("wss://example.test/ws", { token, getToken: async () => fetchNewToken() });
//   client.on("state", (state, detail) => console.log(state, detail));
//   client.subscribe("restaurant:RID", (event) => console.log(event.event, event.data));
//
// It keeps the last event id per channel and, after any disconnect, waits a random time in
// [0, min(cap, base * 2^attempt)] (full jitter), at least Retry-After when a gateway refused it, then
// reconnects and resubscribes every channel with `since`; a subscribe refused with a passing error
// (`rate_limited`, `unavailable`) goes out again after such a wait. It connects with a single-use ticket
// (POST /api/realtime/ticket), so the bearer token never appears in a URL; only an API without that
// endpoint (404) gets `?token=`. With `getToken` it sends `auth` with a fresh token before the old
// one expires. Drivers call `sendLocation(point)`: over the socket when connected; while offline the
// points wait in a bounded buffer (localStorage when there is one) and go out in order through
// POST /api/drivers/me/locations on reconnect.

const BATCH_LIMIT = 500; // points per REST request (the endpoint's maximum)
const MAX_POINT_AGE_MS = 23 * 3600 * 1000; // the API refuses points older than a day

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch (_) {
    return null;
  }
}

function httpUrl(wsUrl) {
  return wsUrl.replace(/^ws(s?):/, "http$1:");
}

// Subscribe errors another try cannot change; any other (`unavailable` when the replay after
// `subscribed` failed, `rate_limited`) is sent again on the same connection after a full-jitter wait.
const FINAL_SUBSCRIBE_ERRORS = new Set(["bad_request", "unknown_type", "invalid_channel", "forbidden",
  "subscription_limit"]);

export class DmsClient {
  /**
   * @param {string} url  the gateway's WebSocket URL (ws:// or wss://, path /ws)
   * @param {object} options  token, getToken (async () => token), api (REST base URL, default this
   *   page's origin), batchMs (0..100), base and cap (backoff ms), refreshBeforeMs, bufferLimit, storageKey
   */
  constructor(url, options = {}) {
    this.url = url;
    this.token = options.token || null;
    this.getToken = options.getToken || null;
    this.api = (options.api || (typeof location !== "undefined" ? location.origin : "")).replace(/\/$/, "");
    this.batchMs = options.batchMs || 0;
    this.base = options.base ?? 500;
    this.cap = options.cap ?? 15000;
    this.refreshBeforeMs = options.refreshBeforeMs ?? 60000;
    this.bufferLimit = options.bufferLimit ?? 5000;
    this.storageKey = options.storageKey || "dms.locations";
    // Probe the gateway for Retry-After after a refused handshake: only where the response is readable
    // (same origin, as behind nginx), unless told the gateway allows this origin to read it.
    this.probe = options.probe ?? (typeof location !== "undefined" && new URL(httpUrl(url)).origin === location.origin);
    this.storage = options.storage !== undefined ? options.storage
      : (typeof localStorage !== "undefined" ? localStorage : null);
    this.channels = new Map(); // channel -> {handler, recover, lastId}
    this.listeners = { state: [], error: [], subscribed: [], unsubscribed: [], welcome: [] };
    this.ws = null;
    this.attempt = 0;
    this.retryAfterMs = 0;
    this.timer = null;
    this.refreshTimer = null;
    this.closed = false;
    this.opened = false;
    this.tickets = true; // false once the API answered 404 for the ticket endpoint
    this.refs = 0;
    this.pendingRefs = new Map(); // ref -> channel of a subscribe, so an error names its channel
    this.subscribeRetries = new Map(); // channel -> timer of a refused subscribe's next try
    this.state = "idle";
    this.buffer = this.loadBuffer();
    this.unacked = new Map(); // ref -> location point sent over the socket, not yet acknowledged
    this.flushing = false;
    if (typeof window !== "undefined" && window.addEventListener) {
      window.addEventListener("online", () => this.reconnectNow());
    }
    queueMicrotask(() => this.connect());
  }

  // -- public API -------------------------------------------------------------------------------------
  subscribe(channel, handler, { recover = true } = {}) {
    const known = this.channels.get(channel);
    this.channels.set(channel, { handler, recover, lastId: known ? known.lastId : null, refusals: 0 });
    if (!known) this.sendSubscribe(channel);
    return this;
  }

  unsubscribe(channel) {
    this.cancelSubscribeRetry(channel);
    if (!this.channels.delete(channel)) return;
    this.send({ type: "unsubscribe", channel, ref: "u" + ++this.refs });
  }

  on(kind, handler) {
    if (!this.listeners[kind]) throw new Error("unknown event " + kind);
    this.listeners[kind].push(handler);
    return this;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    for (const channel of [...this.subscribeRetries.keys()]) this.cancelSubscribeRetry(channel);
    if (this.ws) this.ws.close(1000, "closed by the client");
    this.ws = null;
    this.setState("closed");
  }

  get connected() {
    return this.state === "connected";
  }

  lastId(channel) {
    const state = this.channels.get(channel);
    return state ? state.lastId : null;
  }

  /** Drop the socket as a network failure would; the usual backoff brings it back. */
  drop() {
    if (this.ws) this.ws.close(4000, "dropped by the client");
  }

  reconnectNow() {
    if (this.ws || this.closed) return;
    this.attempt = 0;
    this.connect();
  }

  /** A driver's position: over the socket when connected, else kept (bounded) and sent on reconnect. */
  sendLocation(point) {
    const full = { ...point, recorded_at: point.recorded_at || new Date().toISOString() };
    if (this.connected && this.buffer.length === 0 && !this.flushing) {
      const ref = "l" + ++this.refs;
      this.unacked.set(ref, full); // until the server's ack: a lost connection sends it again over REST
      if (this.send({ type: "location", ...full, ref })) return "sent";
      this.unacked.delete(ref);
    }
    this.buffer.push(full);
    if (this.buffer.length > this.bufferLimit) this.buffer.splice(0, this.buffer.length - this.bufferLimit);
    this.saveBuffer();
    return "buffered";
  }

  pendingLocations() {
    return this.buffer.length;
  }

  // -- connecting ---------------------------------------------------------------------------------------
  async connect() {
    clearTimeout(this.timer);
    if (this.closed || this.ws) return;
    if (typeof navigator !== "undefined" && navigator.onLine === false) {
      // No attempt while the browser knows it is offline (it would only fail and log an error);
      // the "online" event reconnects at once.
      this.setState("offline", { reason: "no network" });
      return;
    }
    this.setState(this.attempt ? "reconnecting" : "connecting");
    let target;
    try {
      target = await this.handshakeUrl();
    } catch (error) {
      this.emit("error", { code: error.code || "connect_failed", message: error.message });
      if (error.fatal) return this.fail(error.message);
      return this.scheduleReconnect();
    }
    if (this.closed || this.ws) return;
    let ws;
    try {
      ws = new WebSocket(target);
    } catch (_) {
      return this.scheduleReconnect();
    }
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => { this.opened = true; };
    ws.onmessage = (message) => this.onFrame(ws, message.data);
    ws.onclose = (event) => this.onClose(ws, event);
  }

  async currentToken(fresh) {
    if (this.getToken && (fresh || !this.token || this.expiresSoon(this.token, 5000))) {
      this.token = await this.getToken();
    }
    if (!this.token) throw Object.assign(new Error("no token"), { fatal: true, code: "no_token" });
    return this.token;
  }

  expiresSoon(token, withinMs) {
    const exp = claims(token)?.exp;
    return typeof exp === "number" && exp * 1000 - Date.now() < withinMs;
  }

  async handshakeUrl() {
    const token = await this.currentToken(false);
    const separator = this.url.includes("?") ? "&" : "?";
    const batch = this.batchMs ? "batch_ms=" + this.batchMs + "&" : "";
    if (this.tickets) {
      const response = await fetch(this.api + "/api/realtime/ticket", {
        method: "POST", headers: { Authorization: "Bearer " + token, Accept: "application/json" },
        cache: "no-store", credentials: "omit",
      });
      if (response.ok) {
        const body = await response.json();
        return this.url + separator + batch + "ticket=" + encodeURIComponent(body.ticket);
      }
      await response.text().catch(() => ""); // read the body, so the request ends
      if (response.status === 401 && this.getToken) {
        this.token = null; // a new one on the next attempt
        throw Object.assign(new Error("the API refused the token"), { code: "invalid_token" });
      }
      if (response.status === 401) throw Object.assign(new Error("the API refused the token"), { fatal: true, code: "invalid_token" });
      if (response.status !== 404) throw Object.assign(new Error("ticket request failed: HTTP " + response.status), { code: "ticket_failed" });
      this.tickets = false; // an API without tickets: the token goes in the URL, as before tickets
    }
    return this.url + separator + batch + "token=" + encodeURIComponent(token);
  }

  onFrame(ws, text) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      return;
    }
    switch (frame.type) {
      case "welcome":
        this.attempt = 0;
        this.retryAfterMs = 0;
        this.setState("connected");
        for (const channel of this.channels.keys()) this.sendSubscribe(channel);
        this.scheduleRefresh();
        this.flushLocations();
        this.emit("welcome", frame);
        break;
      case "subscribed": {
        this.pendingRefs.delete(frame.ref);
        const state = this.channels.get(frame.channel);
        if (!state) return;
        state.refusals = 0;
        const hadSince = state.recover && state.lastId !== null;
        // Not recovered (first subscribe, or `since` past retention): live events start after this id.
        if (!frame.recovered) state.lastId = frame.last_event_id;
        this.emit("subscribed", frame, hadSince);
        break;
      }
      case "event":
        this.deliver(frame);
        break;
      case "batch":
        for (const event of frame.events || []) this.deliver(event);
        break;
      case "unsubscribed":
        // The server ended it (reason "forbidden": the right is gone); do not resubscribe.
        if (frame.reason) this.channels.delete(frame.channel);
        this.emit("unsubscribed", frame);
        break;
      case "authed":
        this.scheduleRefresh();
        break;
      case "ack":
        this.unacked.delete(frame.ref);
        break;
      case "error":
        frame.channel = this.pendingRefs.get(frame.ref) || null;
        this.pendingRefs.delete(frame.ref);
        this.emit("error", frame);
        if (frame.channel) this.subscribeRefused(frame.channel, frame);
        break;
      default:
        break;
    }
  }

  deliver(frame) {
    const state = this.channels.get(frame.channel);
    if (!state) return;
    if (frame.id !== null && state.lastId !== null && frame.id <= state.lastId) return; // seen already
    if (frame.id !== null) state.lastId = frame.id;
    if (state.handler) state.handler(frame);
  }

  async onClose(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearTimeout(this.refreshTimer);
    // Every channel goes out again after the next welcome.
    for (const channel of [...this.subscribeRetries.keys()]) this.cancelSubscribeRetry(channel);
    if (this.unacked.size) {
      // Sent but not acknowledged: they go first, in the order they were taken.
      this.buffer = [...this.unacked.values(), ...this.buffer];
      this.unacked.clear();
      this.saveBuffer();
    }
    if (this.closed) return;
    if (event.code === 4001 && !this.getToken) {
      this.fail("the token expired");
      return;
    }
    if (event.code === 4001) this.token = null;
    if (!this.opened && this.probe) await this.probeRetryAfter();
    this.scheduleReconnect();
  }

  // A browser cannot read a refused handshake's status; the gateway answers a plain GET /ws the same
  // way while it refuses (admission runs before token checks), so ask it for Retry-After.
  async probeRetryAfter() {
    try {
      const response = await fetch(httpUrl(this.url.split("?")[0]), { cache: "no-store", credentials: "omit" });
      const seconds = Number(response.headers.get("Retry-After"));
      await response.text().catch(() => "");
      if (response.status === 503 && Number.isFinite(seconds) && seconds > 0) this.retryAfterMs = seconds * 1000;
    } catch (_) {
      // the gateway is down or does not allow this origin to read it: plain backoff
    }
  }

  scheduleReconnect() {
    if (this.closed) return;
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    const retryAfterMs = this.retryAfterMs;
    const delay = Math.max(Math.random() * ceiling, retryAfterMs);
    this.attempt += 1;
    this.retryAfterMs = 0;
    const offline = typeof navigator !== "undefined" && navigator.onLine === false;
    this.setState(offline ? "offline" : "reconnecting", { delayMs: Math.round(delay), attempt: this.attempt, retryAfterMs });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  // A subscribe refused, or dropped after `subscribed` because its replay failed: the channel is not
  // held. A passing error is tried again after a full-jitter wait, as a reconnect would be.
  subscribeRefused(channel, frame) {
    const state = this.channels.get(channel);
    if (!state || FINAL_SUBSCRIBE_ERRORS.has(frame.code)) return;
    state.refusals += 1;
    const delay = Math.random() * Math.min(this.cap, this.base * 2 ** Math.min(state.refusals, 32));
    this.cancelSubscribeRetry(channel);
    this.subscribeRetries.set(channel, setTimeout(() => {
      this.subscribeRetries.delete(channel);
      if (this.channels.has(channel)) this.sendSubscribe(channel);
    }, delay));
  }

  cancelSubscribeRetry(channel) {
    clearTimeout(this.subscribeRetries.get(channel));
    this.subscribeRetries.delete(channel);
  }

  fail(message) {
    this.closed = true;
    this.setState("closed", { reason: message });
  }

  // -- token refresh ----------------------------------------------------------------------------------
  scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (!this.getToken || !this.token) return;
    const exp = claims(this.token)?.exp;
    if (typeof exp !== "number") return;
    const due = Math.max(1000, exp * 1000 - Date.now() - this.refreshBeforeMs);
    this.refreshTimer = setTimeout(() => this.refresh(), Math.min(due, 2 ** 31 - 1));
  }

  async refresh() {
    try {
      this.token = await this.getToken();
      this.send({ type: "auth", token: this.token, ref: "a" + ++this.refs });
    } catch (error) {
      this.emit("error", { code: "refresh_failed", message: String(error && error.message) });
      this.refreshTimer = setTimeout(() => this.refresh(), 5000);
    }
  }

  // -- frames out ---------------------------------------------------------------------------------------
  sendSubscribe(channel) {
    const state = this.channels.get(channel);
    const frame = { type: "subscribe", channel, ref: "s" + ++this.refs };
    this.pendingRefs.set(frame.ref, channel);
    if (state.recover && state.lastId !== null) frame.since = state.lastId;
    this.send(frame);
  }

  send(frame) {
    if (this.ws && this.ws.readyState === 1 && this.state === "connected") {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  // -- the offline location buffer ------------------------------------------------------------------------
  loadBuffer() {
    if (!this.storage) return [];
    try {
      const saved = JSON.parse(this.storage.getItem(this.storageKey) || "[]");
      return Array.isArray(saved) ? saved : [];
    } catch (_) {
      return [];
    }
  }

  saveBuffer() {
    if (!this.storage) return;
    try {
      if (this.buffer.length) this.storage.setItem(this.storageKey, JSON.stringify(this.buffer));
      else this.storage.removeItem(this.storageKey);
    } catch (_) {
      // storage full or refused: the points stay in memory
    }
  }

  async flushLocations() {
    if (this.flushing || !this.buffer.length) return;
    this.flushing = true;
    try {
      while (this.buffer.length && this.connected) {
        const oldest = Date.now() - MAX_POINT_AGE_MS;
        const fresh = this.buffer.filter((p) => Date.parse(p.recorded_at) > oldest);
        this.buffer = fresh;
        const chunk = fresh.slice(0, BATCH_LIMIT);
        if (!chunk.length) break;
        const response = await fetch(this.api + "/api/drivers/me/locations", {
          method: "POST", cache: "no-store", credentials: "omit",
          headers: { Authorization: "Bearer " + (await this.currentToken(false)),
                     "Content-Type": "application/json", Accept: "application/json" },
          body: JSON.stringify({ points: chunk }),
        });
        await response.text().catch(() => "");
        if (response.status >= 500 || response.status === 429 || response.status === 401) break; // later
        // Accepted, or refused as invalid (4xx): either way these points are done.
        this.buffer.splice(0, chunk.length);
        this.saveBuffer();
        if (!response.ok) this.emit("error", { code: "locations_refused", message: "HTTP " + response.status });
      }
    } catch (_) {
      // offline again: the next welcome flushes
    } finally {
      this.flushing = false;
      this.saveBuffer();
    }
  }

  // -- listeners ----------------------------------------------------------------------------------------
  setState(state, detail) {
    this.state = state;
    this.emit("state", state, detail || {});
  }

  emit(kind, ...args) {
    for (const handler of this.listeners[kind]) {
      try {
        handler(...args);
      } catch (error) {
        setTimeout(() => { throw error; });
      }
    }
  }
}
