// Checks proto/vectors/signing.json from the written spec (proto/SIGNING.md) alone, with Node's
// built-in Ed25519: an independent client proving the formats interoperate.
// Usage: node proto/check-vectors.mjs proto/vectors/signing.json
import { readFileSync } from "node:fs";
import { createPublicKey, verify } from "node:crypto";

const PREFIX = "meshrtc/v1/";

class Writer {
  constructor(domain) { this.parts = [Buffer.from(PREFIX + domain + "\0", "utf8")]; }
  bytes(b) { const len = Buffer.alloc(4); len.writeUInt32BE(b.length); this.parts.push(len, b); return this; }
  str(s) { return this.bytes(Buffer.from(s, "utf8")); }
  u64(n) { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); this.parts.push(b); return this; }
  optStr(s) { if (s === undefined || s === null) { this.parts.push(Buffer.from([0])); } else { this.parts.push(Buffer.from([1])); this.str(s); } return this; }
  finish() { return Buffer.concat(this.parts); }
}

// RFC 8785: sorted keys (UTF-16 order), ECMAScript number and string serialisation.
function jcs(v) {
  if (Array.isArray(v)) return "[" + v.map(jcs).join(",") + "]";
  if (v !== null && typeof v === "object") {
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + jcs(v[k])).join(",") + "}";
  }
  return JSON.stringify(v);
}

function signingBytes(domain, m) {
  switch (domain) {
    case "offer":
    case "answer":
      return new Writer(domain).str(m.peerFrom).str(m.peerTo).str(m.sdp).u64(m.ts).finish();
    case "peer":
      return new Writer(domain).str(m.id).bytes(Buffer.from(m.pubKey, "base64")).optStr(m.region)
        .optStr(m.endpoints?.webrtc).optStr(m.endpoints?.https).u64(m.ts).finish();
    case "envelope":
      return new Writer(domain).str(m.id).str(m.from).str(m.kind).u64(m.ts).u64(m.hlc.wallMs)
        .u64(m.hlc.counter).u64(m.ttl).bytes(Buffer.from(jcs(m.payload), "utf8")).finish();
    default:
      throw new Error(`unknown domain ${domain}`);
  }
}

function publicKey(b64) {
  const x = Buffer.from(b64, "base64").toString("base64url");
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
}

const file = JSON.parse(readFileSync(process.argv[2], "utf8"));
const keys = new Map(file.keys.map((k) => [k.peer, k]));
let failures = 0;
for (const c of file.cases) {
  const m = c.message;
  const bytes = signingBytes(c.domain, m);
  const problems = [];
  if (bytes.toString("hex") !== c.signingBytesHex) problems.push("signing bytes differ");
  const signer = c.domain === "peer" ? m.id : c.domain === "envelope" ? m.from : m.peerFrom;
  const registered = c.domain === "peer" ? { pubKey: m.pubKey, kid: m.kid } : keys.get(signer);
  let verdict;
  if (m.kid && m.kid !== registered.kid) verdict = "wrong_signer";
  else if (!verify(null, bytes, publicKey(registered.pubKey), Buffer.from(m.sig, "base64"))) verdict = "bad_signature";
  else if (m.ts + file.windowMs < file.nowMs) verdict = "stale_timestamp";
  else if (m.ts > file.nowMs + file.windowMs) verdict = "future_timestamp";
  else verdict = "ok";
  if (verdict !== c.expect) problems.push(`verdict ${verdict}, expected ${c.expect}`);
  if (problems.length) { failures++; console.log(`FAIL ${c.name}: ${problems.join("; ")}`); }
}
console.log(`${file.cases.length} vectors checked, ${failures} failed`);
process.exit(failures ? 1 : 0);
