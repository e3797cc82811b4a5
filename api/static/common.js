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

  // -- the live connection: a DmsClient (dms-client.js) whose state drives the indicator -------------------
  // `onFatal(message)` when it gives up (an expired token without a way to get a new one).
  function liveClient(token, onFatal) {
    const client = new window.dms.DmsClient(window.dms.gatewayUrl, { token, storage: null });
    client.on("state", (state, detail) => {
      if (state === "connected") setIndicator("connected");
      else if (state === "connecting") setIndicator("reconnecting", "connecting");
      else if (state === "offline") setIndicator("offline", "no network");
      else if (state === "reconnecting") {
        const retry = detail.delayMs === undefined ? "" : "retry in " + (detail.delayMs / 1000).toFixed(1) + " s";
        setIndicator(detail.attempt > 5 ? "offline" : "reconnecting", retry);
      } else if (state === "closed" && detail.reason) {
        setIndicator("offline", detail.reason === "the token expired" ? "token expired" : detail.reason);
        if (onFatal) onFatal(detail.reason === "the token expired" ? "The token expired. Paste a new one." : detail.reason);
      }
    });
    return client;
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
    // The client is an ES module; this page's nonce covers the import.
    import(document.body.dataset.clientUrl).then(({ DmsClient }) => {
      window.dms.DmsClient = DmsClient;
      start(token, claims);
    });
  }

  function age(iso) {
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (!Number.isFinite(seconds)) return "?";
    if (seconds < 90) return seconds + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    return Math.round(seconds / 3600) + " h ago";
  }

  window.dms = { el, $, api, HttpError, liveClient, boot, showMessage, setIndicator, age, page,
                 gatewayUrl: document.body.dataset.gatewayUrl };
})();
