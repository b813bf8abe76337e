"""A worker that stops reading its socket, against the coordinator's per-connection writer.

A real aiohttp server holds two worker connections built as `ethml serve` builds them
(`ethml.coordinator.dispatch.WorkerConn` on a WebSocket with a heartbeat): one from a raw TCP socket
that completes the WebSocket handshake and then never reads (its receive buffer made small), one from
an aiohttp client that reads. `--messages` job-sized messages (1 KB) are posted to the stalled one,
as a dispatch pass would post them, then one to the healthy one. Reported: how long posting took
(nothing may wait for the stalled worker), when the healthy worker got its message, and when the
stalled connection was cut off (after the send timeout, `--timeout` here instead of the server's 10 s),
with how many of the queued messages left before that.

    python benchmarks/stalled_worker.py [--messages 5000] [--timeout 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import time
from typing import Any

from aiohttp import ClientSession, web

from ethml.coordinator import dispatch
from ethml.coordinator.dispatch import WorkerConn
from ethml.pow.tune import cpu_model

ADDRESS = "0x" + "ab" * 20


async def run(messages: int, send_timeout: float) -> dict[str, Any]:
    dispatch.SEND_TIMEOUT = send_timeout
    conns: dict[str, WorkerConn] = {}
    ended: dict[str, float] = {}
    joined = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=2.0)
        await ws.prepare(request)
        name = request.query["name"]
        conns[name] = WorkerConn(name, ADDRESS, "trainer", ws, 1, "bench", transport=request.transport)
        if len(conns) == 2:
            joined.set()
        try:
            async for _msg in ws:
                pass
        finally:
            await conns[name].stop()
            ended[name] = time.monotonic()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    raw.sendall(
        f"GET /ws?name=stalled HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        async with ClientSession() as session:
            healthy = await session.ws_connect(f"http://127.0.0.1:{port}/ws?name=healthy")
            await asyncio.wait_for(joined.wait(), 30)
            stalled = conns["stalled"]
            started = time.monotonic()
            posted = [stalled.post({"type": "job", "n": n, "pad": "x" * 1000}) for n in range(messages)]
            post_s = time.monotonic() - started
            conns["healthy"].post({"type": "job", "job": "healthy"})
            got = await healthy.receive_json(timeout=30)
            healthy_s = time.monotonic() - started
            outcomes = await asyncio.wait_for(asyncio.gather(*posted), send_timeout + 30)
            await asyncio.wait_for(_until(lambda: "stalled" in ended), 30)
            result = {
                "cpu": cpu_model(),
                "messages": messages,
                "send_timeout_s": send_timeout,
                "post_ms": round(post_s * 1000, 1),
                "healthy_ms": round(healthy_s * 1000, 1),
                "healthy_got": got.get("job"),
                "cut_off_s": round(ended["stalled"] - started, 2),
                "left_before_cut_off": sum(outcomes),
                "healthy_still_open": not healthy.closed,
            }
            await healthy.close()
    finally:
        raw.close()
        await runner.cleanup()
    return result


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000, help="1 KB messages posted to the stalled worker")
    ap.add_argument("--timeout", type=float, default=3.0, help="the send timeout, in seconds")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.messages < 1 or args.timeout <= 0:
        ap.error("--messages must be at least 1 and --timeout above 0")
    r = asyncio.run(run(args.messages, args.timeout))
    if args.json:
        print(json.dumps(r))
        return
    print(f"CPU: {r['cpu']}")
    print(f"{r['messages']:,} messages posted to the stalled worker in {r['post_ms']} ms")
    print(f"the healthy worker got its message {r['healthy_ms']} ms after the first post ({r['healthy_got']})")
    print(
        f"the stalled connection was cut off {r['cut_off_s']} s after the first post (send timeout "
        f"{r['send_timeout_s']} s); {r['left_before_cut_off']:,} of its messages had left by then"
    )
    print(f"the healthy worker's connection stayed open: {r['healthy_still_open']}")


if __name__ == "__main__":
    main()
