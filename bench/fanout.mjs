// Workload 11's timed part (bench/fanout.py sets it up): RECEIVERS clients long-poll /sync
// while one sender sends RATE messages per second into their room; every delivery is timed.
//
// Input (JSON on stdin): {base, room, sender: token, receivers: [token…], rate, seconds, grace_s}.
// Output (JSON on stdout): per-delivery latencies summarised, missing deliveries, send latency.
//
// Node's own http module with a keep-alive agent: one socket per receiver (each holds its
// long-poll) plus the sender's. A delivery's latency is the moment a receiver's sync answer
// carrying the message was parsed minus the moment its send request was issued, on one clock.

import http from "node:http";

const input = JSON.parse(await new Promise((resolve) => {
  let s = "";
  process.stdin.on("data", (d) => (s += d));
  process.stdin.on("end", () => resolve(s));
}));
const { base, room, sender, receivers, rate, seconds, grace_s } = input;
const url = new URL(base);
const agent = new http.Agent({ keepAlive: true, maxSockets: receivers.length + 8 });

function call(method, path, token, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request({
      host: url.hostname, port: url.port, path, method, agent,
      headers: { authorization: `Bearer ${token}`, ...(data ? { "content-type": "application/json", "content-length": data.length } : {}) },
    }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode !== 200) reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 200)}`));
        else resolve(JSON.parse(text));
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(data);
  });
}

const filter = encodeURIComponent(JSON.stringify({
  room: { rooms: [room], timeline: { limit: 50 }, state: { lazy_load_members: true }, ephemeral: { not_types: ["*"] } },
  presence: { not_types: ["*"] }, account_data: { not_types: ["*"] },
}));
const total = Math.round(rate * seconds);
const sentAt = new Array(total).fill(null); // performance.now() when the send was issued
const sendMs = [];
const latencies = [];
const seen = receivers.map(() => new Set());
let stopping = false;
let errors = 0;

async function receive(i, token) {
  // The position to long-poll from: an initial sync before anything is sent.
  let since = (await call("GET", `/_matrix/client/v3/sync?timeout=0&filter=${filter}`, token)).next_batch;
  while (!stopping) {
    let res;
    try {
      res = await call("GET", `/_matrix/client/v3/sync?timeout=30000&filter=${filter}&since=${encodeURIComponent(since)}`, token);
    } catch (e) {
      if (stopping) return;
      errors++;
      await new Promise((r) => setTimeout(r, 100));
      continue;
    }
    const now = performance.now();
    since = res.next_batch;
    for (const ev of res.rooms?.join?.[room]?.timeline?.events ?? []) {
      const n = ev.content?.fanout;
      if (typeof n === "number" && sentAt[n] !== null && !seen[i].has(n)) {
        seen[i].add(n);
        latencies.push(now - sentAt[n]);
      }
    }
  }
}

async function send() {
  const start = performance.now();
  for (let n = 0; n < total; n++) {
    const due = start + (n * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    sentAt[n] = performance.now();
    await call("PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/send/m.room.message/f${n}-${Date.now()}`, sender,
      { msgtype: "m.text", body: `fan-out ${n}`, fanout: n });
    sendMs.push(performance.now() - sentAt[n]);
  }
  return performance.now() - start;
}

const pollers = receivers.map((t, i) => receive(i, t));
// Every receiver has its first long-poll waiting before the first send.
await new Promise((r) => setTimeout(r, 1000));
const sendingMs = await send();
const deadline = performance.now() + grace_s * 1000;
while (performance.now() < deadline && seen.some((s) => s.size < total)) {
  await new Promise((r) => setTimeout(r, 50));
}
stopping = true;
const pct = (xs, p) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const expected = total * receivers.length;
process.stdout.write(JSON.stringify({
  receivers: receivers.length, messages: total, rate, achieved_rate: total / (sendingMs / 1000),
  deliveries: latencies.length, missing: expected - latencies.length, errors,
  p50_ms: pct(latencies, 50), p99_ms: pct(latencies, 99), max_ms: latencies.length ? Math.max(...latencies) : null,
  send_p50_ms: pct(sendMs, 50), send_p99_ms: pct(sendMs, 99),
}) + "\n");
agent.destroy();
process.exit(0);
