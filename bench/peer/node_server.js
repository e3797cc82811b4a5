"use strict";
// The Node peer of the fan-out benchmark: socket.io 4.8 with @socket.io/redis-adapter, rooms per channel.
//
// `node node_server.js` with PEER_PORT, REDIS_URL and JWT_SECRET in the environment. Clients connect
// with `?token=JWT`, emit `subscribe {channel}` (acknowledged) and receive `event` messages that the
// feeder publishes through the adapter's Redis channel. Settings are the library defaults except the
// ping interval, which matches the other servers so no system pays for more keepalive traffic.

const crypto = require("crypto");
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PEER_PORT || "8102");
const secret = process.env.JWT_SECRET || "";

// HS256 check written out here rather than pulling in a JWT package: the peer verifies the same
// token the other servers verify, and the cost stays in the connect path where it belongs.
function tokenValid(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) return false;
  const expected = crypto.createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
  const given = Buffer.from(parts[2], "base64url");
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return false;
  try {
    const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
    const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
    return header.alg === "HS256" && typeof claims.exp === "number" && claims.exp > Date.now() / 1000;
  } catch (err) {
    return false;
  }
}

async function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const server = http.createServer((req, res) => {
    if (req.url === "/health") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end('{"status":"ok"}');
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const io = new Server(server, {
    adapter: createAdapter(pub, sub),
    serveClient: false,
    pingInterval: 60000,
    pingTimeout: 30000,
  });
  io.use((socket, next) => (tokenValid(socket.handshake.query.token) ? next() : next(new Error("unauthorized"))));
  io.on("connection", (socket) => {
    socket.on("subscribe", (body, ack) => {
      const channel = String(body && body.channel);
      socket.join(channel);
      if (typeof ack === "function") ack({ subscribed: channel });
    });
  });
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  server.listen(port, "127.0.0.1", () => console.error(`socket.io (node) peer on http://127.0.0.1:${port}`));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
