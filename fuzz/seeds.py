#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/ (not committed:
the committed corpora under fuzz/corpus/ are these seeds grown by fuzzing and minimised).

Sources: the README's configuration reference, the config and routing unit tests, and the
raw smuggling / framing requests of tests/e2e/adversarial/."""
import hashlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


# --- config: YAML configs and JSON routes -----------------------------------------------
readme = open(os.path.join(ROOT, "README.md")).read()
for block in re.findall(r"```yaml\n(.*?)```", readme, re.S):
    write("config", block)
for path in ["fuzz/src/targets.rs", "proxy/src/routing_table.rs", "config/src/validate.rs"]:
    text = open(os.path.join(ROOT, path)).read()
    for raw in re.findall(r'r#"\n?(.*?)"#', text, re.S):
        if "routes:" in raw or "listen:" in raw:
            write("config", raw)
write("config", "routes: []\n")
write("config", "routes:\n  - name: a\n    stable: { endpoints: [\"127.0.0.1:1\"] }\n")
write("config", "routes:\n  - { name: a, hosts: [\"*.x.test\"], path_prefix: /api, path_exact: true, stable: { endpoints: [\"[::1]:80\"] }, canary: { endpoints: [\"h:1\"] }, weight: 12.3456 }\n")
write("config", "trusted_proxies: [\"10.0.0.0/8\", \"::1/128\"]\nlimits: { max_header_count: 1, max_header_bytes: 1 }\nroutes:\n  - name: a\n    override: { header: x-c, header_pattern: \"a+(b|c)*\" }\n    stable: { endpoints: [\"a:1\"] }\n")
for route in [
    {"name": "r", "stable": {"endpoints": ["10.0.0.1:80"]}},
    {"name": "coolapp", "hosts": ["coolapp.example.com", "*.coolapp.example.com"], "path_prefix": "/",
     "stable": {"endpoints": ["10.0.0.1:8080"]}, "canary": {"endpoints": ["10.0.0.3:8080"]}, "weight": 10,
     "affinity": {"key": "cookie", "cookie": "canary_id", "max_age": "30d"},
     "override": {"enabled": True, "header": "x-canary", "cookie": "canary"}, "expose_variant": True,
     "rollout": {"steps": [10, 25, 50, 100], "interval": "5m",
                 "analysis": {"window": "60s", "min_requests": 50, "max_error_rate": 5}}},
    {"name": "k", "hosts": ["a.test"], "stable": {"kubernetes": {"service": "svc", "port": "http"}},
     "canary": {"kubernetes": {"selector": "app=x,track=canary", "port": 5000}}},
    {"name": "bad name!", "hosts": ["a\nb", "{x}", "../etc"], "path_prefix": "no-slash", "stable": {}},
]:
    write("config", json.dumps(route))

# --- route_lookup: host NUL path ----------------------------------------------------------
for host, path in [
    ("app.example.com", "/"), ("App.Example.Com:8080", "/api/v1"), ("app.example.com.", "/api"),
    ("app.example.com", "/apix"), ("x.example.com", "/anything"), ("a.b.example.com", "/static/x"),
    ("other.org", "/public/x"), ("other.org", "/public"), ("[::1]:8080", "/public/a"),
    ("app.example.com", "/login?next=/"), ("app.example.com", "/login/sso"), ("x", "/healthz"),
    ("api.example.org", "/api?x=1"), ("app.example.com", "/api/v2"), ("", ""), ("[", "/"),
    ("app.example.com:80:80", "/"), ("\u00e9.example.com", "/public/"), ("a" * 300, "/public/x"),
]:
    write("route_lookup", host.encode() + b"\0" + path.encode())

# --- path: request targets (the normaliser's vector table and the e2e cases) -------------
for path in re.findall(r'\("(/[^"]*|\*|public|)"', open(os.path.join(ROOT, "config/src/path.rs")).read()):
    write("path", path.replace("\\\\", "\\"))
for path in re.findall(r'"(/[^"]*)"', open(os.path.join(ROOT, "tests/e2e/paths.rs")).read()):
    write("path", path.replace("\\\\", "\\"))

# --- affinity: header lines ----------------------------------------------------------------
for lines in [
    ["cookie: a=1; canary_id=abc-123", "cookie: b=2"],
    ["cookie: canary_id=\"user-7\"", "x-user-id: u1"],
    ["cookie: canary_id=" + "x" * 129],
    ["cookie: canary=always; canary_id=a<b>"],
    ["x-forwarded-for: 203.0.113.9, 10.1.1.1"],
    ["forwarded: for=\"[2001:db8::7]:4711\";proto=https"],
    ["forwarded: For=192.0.2.60, for=10.0.0.1", "x-canary: yes please"],
    ["x-forwarded-for: nonsense", "x-beta: beta-42"],
    ["x-forwarded-for: 1.2.3.4:80, [2001:db8::1]:443, ::ffff:10.0.0.2"],
    ["cookie: =; ;;canary_id==; canary_id= spaced "],
]:
    write("affinity", "\n".join(lines))

# --- h1_request: raw requests, mostly from tests/e2e/adversarial/ -------------------------
SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
CHUNKED = "5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
reqs = [
    "GET / HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    "GET /a HTTP/1.1\r\nHost: app\r\n\r\nGET /b HTTP/1.1\r\nHost: app.example.com\r\n\r\n",
    "HEAD / HTTP/1.1\r\nHost: app\r\n\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n",
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED,
    "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\n" + "x" * 100,
    "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n" + "y" * 65 + "\r\n0\r\n\r\n",
    "POST /upload HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    "GET / HTTP/1.0\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: secure.example.com\r\n\r\n",
    "GET /x HTTP/1.1\r\nHost: app\r\nCookie: canary_id=u1; canary=always\r\nx-canary: never\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nTE: trailers\r\nx-canary-variant: canary\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" + SMUGGLED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 1, 2\r\n\r\nab" + SMUGGLED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: +5\r\n\r\nhello" + SMUGGLED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: \x0bchunked\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: Chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n b\r\n\r\n" + SMUGGLED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length:\r\n 5\r\n\r\nhello" + SMUGGLED,
    "GET / HTTP/1.1\r\nHost: app\r\nX-A: a\0b\r\n\r\n" + SMUGGLED,
    "GET / HTTP/1.1\r\nHost: app\r\nX-A: a\rb\r\n\r\n" + SMUGGLED,
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length : 5\r\n\r\nhello" + SMUGGLED,
    "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app, evil.test\r\nConnection: close\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: user@app\r\n\r\n",
    "G(ET / HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.2\r\nHost: app\r\n\r\n",
    "GET /\r\n\r\n",
    "GET http://app.example.com/x HTTP/1.1\r\nHost: other\r\n\r\n",
    "GET http://user@app/x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    "CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(30)) + "\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nX-Big: " + "b" * 9000 + "\r\n\r\n",
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nx",
]
for r in reqs:
    write("h1_request", r.encode("latin-1"))
print("seeds written to", OUT, file=sys.stderr)
