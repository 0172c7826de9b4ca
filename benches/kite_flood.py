"""A Kite ticker server for the capture benchmark that sends pre-generated full-mode frames as
fast as the socket takes them (``benches/bench_capture.py``; not a benchmark itself).

Why not the simulator: its market generator (``market_round``, ``rows_as_kinds``,
``encode_frame_fast``) costs more per tick than capture does, so at full rate it would measure
itself. Here the frames come from that very generator, made once (``make_frames``), and are
cycled. The wire protocol is Kite's, on a real loopback WebSocket: the credentials in the
query are checked (HTTP 403 otherwise), the client's JSON subscribe/mode messages are read,
each connection streams only once all its subscribed tokens are in full mode, binary frames of
many packets, a 1-byte heartbeat each second once the quota is sent.

Run in its own process (its own core and GIL)::

    python benches/kite_flood.py FRAMES.npz QUOTA

FRAMES.npz (``save_frames``) holds one frame list per shard; a connection subscribed to
every token of shard s's frames is sent ``frames[s][k % n]`` for k < QUOTA, then
only heartbeats. Prints ``port N`` when listening, then one JSON line per closed connection:
what it sent (messages, frames, packets, heartbeats, payload bytes, xxh3-64 of the binary
payloads in order).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from shrivenq.kite import MODE_FULL
from shrivenq.sim.kite_server import (
    DEMO_ACCESS_TOKEN, DEMO_API_KEY, HEARTBEAT, _packet_kinds, encode_frame_fast, market_round,
    rows_as_kinds, sim_master,
)
from shrivenq.sim.market import KiteMarket, universe_from_instruments


def make_frames(instruments: int, shards: list[list[int]], frames_per_shard: int,
                packets_per_frame: int, seed: int = 1) -> list[list[bytes]]:
    """Full-mode frames for each shard's tokens from the simulator's own vectorised generator
    (``market_round``: every instrument once per round, random order), over the padded sample
    master of ``instruments`` instruments, exactly as ``KiteSimServer`` at rate=None builds
    them (indices as index packets)."""
    universe = universe_from_instruments(sim_master(instruments))
    index = {u.token: i for i, u in enumerate(universe)}
    is_index = np.array([u.is_index for u in universe])
    out = []
    for s, tokens in enumerate(shards):
        market = KiteMarket(universe, seed=seed * 1_000_003 + s, start_time=1_763_610_300)
        active = np.array([index[t] for t in tokens], dtype=np.int64)
        need = frames_per_shard * packets_per_frame
        rows = np.concatenate([market_round(market, active, 1_763_610_300 + r)
                               for r in range(-(-need // len(active)))])[:need]
        by_token = {int(t): i for i, t in enumerate(market.token)}
        idx = np.array([by_token[int(t)] for t in rows["token"]], dtype=np.int64)
        kinds = _packet_kinds(np.full(len(rows), MODE_FULL, dtype=np.int8), is_index[idx])
        rows = rows_as_kinds(rows, kinds)
        out.append([encode_frame_fast(rows[i:i + packets_per_frame])
                    for i in range(0, need, packets_per_frame)])
    return out


def save_frames(path: Path, frames: list[list[bytes]]) -> None:
    arrays = {}
    for s, fs in enumerate(frames):
        arrays[f"data{s}"] = np.frombuffer(b"".join(fs), dtype=np.uint8)
        arrays[f"len{s}"] = np.array([len(f) for f in fs], dtype=np.int64)
    np.savez(path, **arrays)


def load_frames(path: Path) -> list[list[bytes]]:
    z = np.load(path)
    out = []
    s = 0
    while f"data{s}" in z:
        data, lengths = z[f"data{s}"].tobytes(), z[f"len{s}"]
        off = np.concatenate(([0], np.cumsum(lengths))).tolist()
        out.append([data[off[i]:off[i + 1]] for i in range(len(lengths))])
        s += 1
    return out


async def serve_flood(frames: list[list[bytes]], quota: int) -> None:
    import xxhash
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed
    from http import HTTPStatus

    shard_tokens = []
    for fs in frames:   # every token a shard's frames carry, to match subscriptions against
        toks = set()
        for f in fs:
            n, o = int.from_bytes(f[:2], "big"), 2
            for _ in range(n):
                ln = int.from_bytes(f[o:o + 2], "big")
                toks.add(int.from_bytes(f[o + 2:o + 6], "big"))
                o += 2 + ln
        shard_tokens.append(toks)
    next_id = iter(range(1, 1 << 30))

    def process_request(connection, request):
        parts = urlsplit(request.path)
        query = parse_qs(parts.query)
        if parts.path not in ("", "/"):
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if ((query.get("api_key") or [""])[0] != DEMO_API_KEY
                or (query.get("access_token") or [""])[0] != DEMO_ACCESS_TOKEN):
            return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None

    async def sender(ws, shard: int, st: dict) -> None:
        fs = frames[shard]
        n = len(fs)
        h = xxhash.xxh3_64()
        send = ws.send
        for k in range(quota):
            f = fs[k % n]
            await send(f)
            h.update(f)
            st["frames"] += 1
            st["packets"] += int.from_bytes(f[:2], "big")
            st["bytes"] += len(f)
        st["xxh3"] = h.hexdigest()
        st["done"] = True
        while True:
            await asyncio.sleep(1.0)
            await send(HEARTBEAT)
            st["heartbeats"] += 1
            st["bytes"] += 1

    async def handler(ws) -> None:
        conn = next(next_id)
        subs: dict[int, str] = {}
        st = {"conn": conn, "shard": None, "frames": 0, "packets": 0, "heartbeats": 0,
              "bytes": 0, "xxh3": None, "done": False}
        task = None
        try:
            async for message in ws:
                doc = json.loads(message)
                a, v = doc["a"], doc["v"]
                if a == "subscribe":
                    for t in v:
                        subs[t] = "quote"
                elif a == "unsubscribe":
                    for t in v:
                        subs.pop(t, None)
                elif a == "mode":
                    for t in v[1]:
                        if t in subs:
                            subs[t] = v[0]
                if task is None and subs and all(m == "full" for m in subs.values()):
                    for s, toks in enumerate(shard_tokens):
                        if toks <= set(subs):
                            st["shard"] = s
                            task = asyncio.create_task(sender(ws, s, st))
                            break
        except ConnectionClosed:
            pass
        finally:
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, ConnectionClosed):
                    pass
            st["messages"] = st["frames"] + st["heartbeats"]
            print(json.dumps(st), flush=True)

    async with serve(handler, "127.0.0.1", 0, process_request=process_request,
                     compression=None, ping_interval=None, max_size=1 << 20,
                     close_timeout=2) as server:
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(serve_flood(load_frames(Path(sys.argv[1])), int(sys.argv[2])))
    except KeyboardInterrupt:
        pass
