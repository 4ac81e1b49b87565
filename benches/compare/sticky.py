#!/usr/bin/env python3
"""Stickiness check for the canary-share figure.

`sticky.py record --port P --users K --out FILE`: K random uids, one request each (over a
few keep-alive connections), writes `uid variant` lines.
`sticky.py verify --port P --in FILE`: re-requests every uid of FILE on fresh connections
in another order and prints `STICKYJSON {"users":K,"same":S,"changed":C,"failed":F,"canary":N}`.
The variant is the backend's `X-Variant` response header. Standard library only.
"""
import argparse
import asyncio
import json
import random


async def worker(host, port, uids, out):
    reader = writer = None
    for uid in uids:
        for attempt in range(2):
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                writer.write(f"GET /sticky HTTP/1.1\r\nHost: bench.local\r\nCookie: uid={uid}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                status = int(head.split(b" ", 2)[1])
                variant, length, close = None, 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name, value = name.strip().lower(), value.strip()
                    if name == b"x-variant":
                        variant = value.decode()
                    elif name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.lower() == b"close":
                        close = True
                if length:
                    await asyncio.wait_for(reader.readexactly(length), 10)
                out[uid] = variant if status == 200 else None
                if close:
                    writer.close()
                    writer = None
                break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
                if writer is not None:
                    writer.close()
                writer = None
                out[uid] = None
    if writer is not None:
        writer.close()


async def run(host, port, uids, conns):
    out = {}
    chunks = [uids[i::conns] for i in range(conns)]
    await asyncio.gather(*(worker(host, port, c, out) for c in chunks))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["record", "verify"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--out")
    ap.add_argument("--in", dest="infile")
    args = ap.parse_args()

    if args.mode == "record":
        uids = ["%032x" % random.getrandbits(128) for _ in range(args.users)]
        got = asyncio.run(run(args.host, args.port, uids, args.connections))
        with open(args.out, "w") as f:
            for uid in uids:
                f.write(f"{uid} {got.get(uid)}\n")
        return
    first = {}
    with open(args.infile) as f:
        for line in f:
            uid, variant = line.split()
            first[uid] = None if variant == "None" else variant
    uids = list(first)
    random.shuffle(uids)
    # different connection count than `record`, so requests land on other connections
    got = asyncio.run(run(args.host, args.port, uids, args.connections + 3))
    same = sum(1 for u in uids if first[u] is not None and got.get(u) == first[u])
    failed = sum(1 for u in uids if first[u] is None or got.get(u) is None)
    changed = len(uids) - same - failed
    canary = sum(1 for u in uids if first[u] == "canary")
    print("STICKYJSON " + json.dumps(
        {"users": len(uids), "same": same, "changed": changed, "failed": failed, "canary": canary}))


if __name__ == "__main__":
    main()
