// The benchmark's reference: a minimal WebSocket signaling relay on the npm `ws` package, doing
// what the proxy's /ws does on the measured path (proto/SIGNALING.md): a hello, anonymous
// registration, relaying offer/answer/candidate to `to` with `from` stamped, ping/pong, and an
// error reply for anything refused. Prints {"port": N} once listening.
import { WebSocketServer } from "ws";
import { randomBytes } from "node:crypto";

const peers = new Map();
const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, maxPayload: 256 * 1024 });
const RELAYED = new Set(["offer", "answer", "candidate"]);

wss.on("connection", (ws) => {
  let me = null;
  ws.send(JSON.stringify({ type: "hello", nonce: randomBytes(16).toString("base64url"), serverTime: Date.now() }));
  ws.on("message", (data, isBinary) => {
    const error = (code, message) => ws.send(JSON.stringify({ type: "error", code, message }));
    if (isBinary) return error("bad_frame", "messages are JSON text frames");
    if (data.length > 65536) return error("message_too_large", `${data.length} bytes`);
    let m;
    try { m = JSON.parse(data); } catch (e) { return error("bad_message", String(e)); }
    if (m.type === "ping") return ws.send(JSON.stringify({ type: "pong" }));
    if (m.type === "register") {
      if (me) return error("already_registered", me);
      me = "anon-" + randomBytes(6).toString("hex");
      peers.set(me, ws);
      return ws.send(JSON.stringify({ type: "registered", id: me, anonymous: true }));
    }
    if (!RELAYED.has(m.type) || typeof m.to !== "string") return error("bad_message", "unknown type or no `to`");
    if (!me) return error("not_registered", "register before signaling");
    const target = peers.get(m.to);
    if (!target) return error("unknown_peer", `${m.to} is not connected`);
    const out = { type: m.type, from: me };
    if (m.type === "candidate") out.candidate = m.candidate; else out.sdp = m.sdp;
    target.send(JSON.stringify(out));
  });
  ws.on("close", () => { if (me && peers.get(me) === ws) peers.delete(me); });
});
wss.on("listening", () => console.log(JSON.stringify({ port: wss.address().port })));
