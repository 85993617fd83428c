"""Workload 10, sliding sync (MSC4186, what Element X and matrix-rust-sdk's UI crate sync with).
bench/run.py runs it on each row after the other workloads of that row, on the same server
process. Synapse serves the same endpoint natively (since 1.114).

One user ("ss_alice") is in ROOMS rooms, each with one message, created before anything is
timed. Then:
  A. first response: a new connection (no `pos`) asking for a list of every room with a 20-room
     window (`ranges [[0, 19]]`), `timeline_limit` 1 and the `required_state` matrix-sdk-ui's room
     list asks for, plus the e2ee, to-device, account-data, receipts and typing extensions;
     timed end to end from the client (request to parsed JSON), FIRST_SAMPLES times, p50 and
     min; the window's order is checked against the order the rooms were messaged in.
  B. delivery: the connection long-polls (`timeout` 30 s) on its `pos`; a second user sends a
     message to one of the rooms; delivery = the long-poll's answer carrying it − the moment the
     send was acknowledged (negative when the answer came first), DELIVERY_SAMPLES times,
     p50/p99 and how many answers did not carry the message.
  C. memory per open connection: DEVICES logins of the same user, each opening
     CONNS_PER_DEVICE connections (distinct `conn_id`s, each after its first response; moss
     keeps at most 16 per device), server RSS before and after, divided by their number. (Synapse keeps
     a connection's state in its database, so its RSS says less; its database grows instead.)
Nothing is asserted: bench/run.py's report shows the numbers and the issue's targets (moss:
first response ≤ 20 ms and ≥ 10× faster than Synapse; delivery p99 ≤ 20 ms).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from appservice import pct

PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
FULL = {"rooms": 1000, "first_samples": 20, "delivery_samples": 100, "devices": 50, "conns_per_device": 10}
QUICK = {"rooms": 40, "first_samples": 5, "delivery_samples": 10, "devices": 4, "conns_per_device": 5}
TARGET_FIRST_MS = 20.0
TARGET_FIRST_SPEEDUP = 10.0
TARGET_DELIVERY_P99_MS = 20.0
CONCURRENCY = 8  # set-up requests in flight

# What matrix-sdk-ui's RoomListService asks for each room of its list.
REQUIRED_STATE = [
    ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.name", ""],
    ["m.room.topic", ""], ["m.room.avatar", ""], ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
    ["m.room.join_rules", ""], ["m.room.history_visibility", ""], ["m.room.create", ""], ["m.room.tombstone", ""],
    ["m.room.pinned_events", ""], ["m.call.member", "*"],
]
EXTENSIONS = {"to_device": {"enabled": True}, "e2ee": {"enabled": True}, "account_data": {"enabled": True},
              "receipts": {"enabled": True}, "typing": {"enabled": True}}


def body(conn_id: str, window: int = 19) -> dict:
    return {"conn_id": conn_id, "lists": {"all_rooms": {"ranges": [[0, window]], "timeline_limit": 1,
                                                        "required_state": REQUIRED_STATE}},
            "extensions": EXTENSIONS}


async def gather_limited(coros, limit: int = CONCURRENCY) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def workload(server, quick: bool, Client, rss_mib) -> dict:
    import aiohttp

    p = QUICK if quick else FULL
    out: dict = {"params": p}
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        alice = await Client(http, server.base).register(f"ss_alice_{tag}")
        bob = await Client(http, server.base).register(f"ss_bob_{tag}")
        rooms = await gather_limited([alice.create_room(name=f"room {i}") for i in range(p["rooms"])])
        for room in rooms[:5]:
            await bob.join(room)
        # One message per room, in order: the last one is the most recent.
        for i, room in enumerate(rooms):
            await alice.send(room, f"message {i}")
        newest_first = list(reversed(rooms))

        async def call(b: dict, pos: str | None = None, timeout: int = 0) -> tuple[float, dict]:
            q = f"?timeout={timeout}" + (f"&pos={pos}" if pos else "")
            t = time.perf_counter()
            data = await alice.call("POST", PATH + q, b)
            return time.perf_counter() - t, data

        # A. first response of a new connection
        times, order_ok = [], True
        for i in range(p["first_samples"]):
            took, data = await call(body(f"first{i}"))
            times.append(took * 1000)
            ops = (data.get("lists", {}).get("all_rooms", {}).get("ops") or [{}])[0].get("room_ids")
            window = ops if ops is not None else sorted(data.get("rooms", {}), key=lambda r: -data["rooms"][r].get("bump_stamp", 0))
            order_ok &= window == newest_first[:20] and len(data.get("rooms", {})) == 20
        out["first"] = {"p50_ms": pct(times, 50), "min_ms": min(times), "order_ok": order_ok,
                        "count": data.get("lists", {}).get("all_rooms", {}).get("count")}

        # B. delivery to a long-polling connection
        _, data = await call(body("live"))
        pos = data["pos"]
        deliveries, missing = [], 0
        target = rooms[0]
        for i in range(p["delivery_samples"]):
            text = f"live {i} {uuid.uuid4().hex[:8]}"
            poll = asyncio.create_task(call(body("live"), pos, 30000))
            await asyncio.sleep(0.02)  # the long-poll is waiting
            await bob.send(target, text)
            acked = time.perf_counter()
            answer: dict = {}
            while True:  # answers that do not carry it yet (a receipt, say) are followed up
                _, answer = await poll
                pos = answer["pos"]
                events = answer.get("rooms", {}).get(target, {}).get("timeline", [])
                if any(e.get("content", {}).get("body") == text for e in events):
                    deliveries.append((time.perf_counter() - acked) * 1000)
                    break
                if time.perf_counter() - acked > 10:
                    missing += 1
                    break
                poll = asyncio.create_task(call(body("live"), pos, 30000))
        out["delivery"] = {"p50_ms": pct(deliveries, 50), "p99_ms": pct(deliveries, 99), "missing": missing}

        # C. memory per open connection: DEVICES logins, each holding CONNS_PER_DEVICE connections
        # (moss keeps at most 16 per device and evicts the oldest, so one device would measure
        # nothing). Logins first, so the RSS difference holds only the connections.
        tokens = [await alice.login(alice.user_id.split(":")[0][1:]) for _ in range(p["devices"])]
        await asyncio.sleep(0.5)
        before = rss_mib()
        opened = 0
        for d, token in enumerate(tokens):
            for i in range(p["conns_per_device"]):
                data = await alice.call("POST", PATH + "?timeout=0", body(f"mem{d}_{i}"), token=token)
                opened += "pos" in data
        await asyncio.sleep(0.5)
        after = rss_mib()
        out["memory"] = {"rss_before_mib": before, "rss_after_mib": after, "connections": opened,
                         "kib_per_connection": (after - before) * 1024 / max(opened, 1)}
    out["duration_s"] = round(time.monotonic() - started, 1)
    return out


ROWS = [
    ("rooms the user is in", "first", "count", 0),
    ("A. first response, 20-room window: p50 (ms)", "first", "p50_ms", 1),
    ("A. first response: min (ms)", "first", "min_ms", 1),
    ("A. window in recency order", "first", "order_ok", None),
    ("B. delivery to a long-poll: p50 (ms)", "delivery", "p50_ms", 1),
    ("B. delivery: p99 (ms)", "delivery", "p99_ms", 1),
    ("B. answers that missed the message", "delivery", "missing", 0),
    ("C. connections held open", "memory", "connections", 0),
    ("C. server RSS growth per open connection (KiB)", "memory", "kib_per_connection", 1),
    ("workload time, set-up included (s)", None, "duration_s", 1),
]


def _fmt(v, digits) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def targets(results: dict) -> list[dict]:
    m = (results.get("moss") or {}).get("sliding")
    if not m or "first" not in m:
        return []
    out = [
        {"target": f"first sliding sync response, {m['params']['rooms']:,} rooms, 20-room window", "goal":
         f"≤ {TARGET_FIRST_MS:g} ms", "measured": f"{m['first']['p50_ms']:.1f} ms",
         "met": m["first"]["p50_ms"] <= TARGET_FIRST_MS},
        {"target": "long-poll delivery p99", "goal": f"≤ {TARGET_DELIVERY_P99_MS:g} ms",
         "measured": f"{m['delivery']['p99_ms']:.1f} ms", "met": m["delivery"]["p99_ms"] <= TARGET_DELIVERY_P99_MS},
    ]
    syn = [results[n]["sliding"] for n in results if n.startswith("synapse") and "first" in (results[n].get("sliding") or {})]
    if syn:
        best = min(s["first"]["p50_ms"] for s in syn)
        speedup = best / m["first"]["p50_ms"] if m["first"]["p50_ms"] else float("nan")
        out.append({"target": "first response vs the fastest Synapse row", "goal": f"≥ {TARGET_FIRST_SPEEDUP:g}× faster",
                    "measured": f"{speedup:.1f}×", "met": speedup >= TARGET_FIRST_SPEEDUP})
    return out


def report(results: dict, meta: dict, titles: dict) -> list[str]:
    names = [n for n in titles if n in results and results[n].get("sliding")]
    if not names:
        return []
    s = {n: results[n]["sliding"] for n in names}
    first = next(iter(s.values()))["params"]
    lines = ["## Sliding sync (workload 10)", "",
             f"One user in {first['rooms']:,} rooms (one message each). A: a new connection's first response for a list "
             "of every room with a 20-room window, timeline_limit 1, matrix-sdk-ui's required_state and five extensions "
             "(client-side time, request to parsed JSON). B: a long-poll on the connection's pos answered by another user's "
             "message (answer − send acknowledged). C: server RSS growth per further open connection.", "",
             "| | " + " | ".join(titles[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, section, key, digits in ROWS:
        cells = []
        for x in s.values():
            v = x.get(key) if section is None else (x.get(section) or {}).get(key)
            cells.append(_fmt(v, digits))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    t = targets(results)
    if t:
        lines += ["", "### Sliding sync targets (moss)", "", "| target | goal | this run | |", "|---|---|---|---|"]
        lines += [f"| {x['target']} | {x['goal']} | {x['measured']} | {'met' if x['met'] else 'missed'} |" for x in t]
    if meta.get("mode") == "quick":
        lines += ["", "Quick mode: few rooms and samples; the targets are for the full run."]
    return lines
