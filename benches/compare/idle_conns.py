#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to a proxy, send one request on each, keep them open.

Used by run.sh for the "RSS per idle connection" figure: once every connection has had
its response, this prints `READY ok=<n> failed=<n>` on stdout, then holds the connections
until SIGTERM/SIGINT arrives or --hold seconds pass (bounded), and exits.

At most --concurrency requests are in flight at once, so the proxy needs only a few
upstream connections and the growth measured is that of idle *client* connections.
Standard library only.
"""
import argparse
import asyncio
import random
import signal


async def open_one(host, port, sem, conns, stats, source):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(source, 0) if source else None), 10
            )
            uid = "%032x" % random.getrandbits(128)
            writer.write(
                f"GET / HTTP/1.1\r\nHost: bench.local\r\nCookie: uid={uid}\r\n\r\n".encode()
            )
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await asyncio.wait_for(reader.readexactly(length), 10)
            if status != 200:
                stats["failed"] += 1
                writer.close()
                return
            conns.append((reader, writer))
            stats["ok"] += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats["failed"] += 1


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", "--connections", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--hold", type=float, default=120.0, help="longest time to keep them open (s)")
    ap.add_argument("--sources", type=int, default=1,
                    help="spread connections over 127.0.0.1..127.0.0.N as source addresses")
    args = ap.parse_args()

    sem = asyncio.Semaphore(args.concurrency)
    conns, stats = [], {"ok": 0, "failed": 0}
    sources = [f"127.0.0.{i}" for i in range(1, args.sources + 1)] if args.sources > 1 else [None]
    await asyncio.gather(*(
        open_one(args.host, args.port, sem, conns, stats, sources[i % len(sources)])
        for i in range(args.connections)
    ))
    print(f"READY ok={stats['ok']} failed={stats['failed']}", flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    # still open? count the ones the proxy closed meanwhile (it should not have)
    closed = sum(1 for r, _ in conns if r.at_eof())
    for _, w in conns:
        w.close()
    print(f"DONE closed_by_peer={closed}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
