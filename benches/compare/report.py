#!/usr/bin/env python3
"""Parsing of the load tools' outputs and the markdown report of benches/compare/run.sh.

  report.py parse-wrk FILE       -> "requests duration_s errors"       (wrk-users.lua's WRKJSON line)
  report.py parse-h2load FILE    -> "ok_2xx duration_s failed"
  report.py parse-oha FILE       -> "p50_ms p99_ms achieved_rps errors" (oha --output-format json)
  report.py parse-share FILE     -> "stable canary other duration_s"   (wrk-share.lua's SHAREJSON line)
  report.py parse-sticky FILE    -> "users same changed failed"         (sticky.py verify)
  report.py capacity RESULTS     -> the smallest median HTTP/1.1 req/s among the proxies
  report.py render --results RESULTS --meta META --commands CMDS --work DIR --out FILE

A parse command that finds no result exits 1 and prints nothing. Standard library only.
"""
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "nginx", "haproxy", "canaryd"]
LABEL = {"direct": "direct (no proxy)", "nginx": "nginx", "haproxy": "HAProxy", "canaryd": "canaryd"}
SHARE_EXPECTED = 10.0  # percent to the canary

# figure key -> (title, unit, decimals, better: "higher" | "lower" | None)
FIGURES = {
    "h1_rps": ("HTTP/1.1 requests/s at saturation (wrk)", "req/s", 0, "higher"),
    "h2_rps": ("HTTP/2 h2c requests/s at saturation (h2load)", "req/s", 0, "higher"),
    "h1_cpu_us": ("CPU per request, HTTP/1.1 (proxy utime+stime / requests)", "µs", 2, "lower"),
    "h2_cpu_us": ("CPU per request, h2c", "µs", 2, "lower"),
    "h1_per_core": ("HTTP/1.1 requests/s per fully busy core (1e6 / CPU µs per request; robust to other load)",
                    "req/s", 0, "higher"),
    "h2_per_core": ("h2c requests/s per fully busy core (1e6 / CPU µs per request)", "req/s", 0, "higher"),
    "h1_cpu_util": ("Proxy CPU use during the HTTP/1.1 run (100 = one core busy)", "%", 0, None),
    "h2_cpu_util": ("Proxy CPU use during the h2c run", "%", 0, None),
    "h1_cpu0_busy": ("CPU 0 (the proxy's) busy during the HTTP/1.1 run, all processes of the machine", "%", 0, None),
    "h1_cpu1_busy": ("CPU 1 (load generator and backends) busy during the HTTP/1.1 run, all processes", "%", 0, None),
    "added_p50_ms": ("Added latency p50 over direct, open loop at the fixed rate (oha)", "ms", 3, "lower"),
    "added_p99_ms": ("Added latency p99 over direct, open loop at the fixed rate (oha)", "ms", 3, "lower"),
    "lat_p50_ms": ("Latency p50 at the fixed rate (absolute)", "ms", 3, "lower"),
    "lat_p99_ms": ("Latency p99 at the fixed rate (absolute)", "ms", 3, "lower"),
    "lat_rps": ("Rate achieved by oha at the fixed rate", "req/s", 0, None),
    "rss_idle_kib": ("RSS idle (fresh process after one request; nginx: master + worker)", "KiB", 0, "lower"),
    "rss_per_conn_kib": ("RSS growth per idle keep-alive connection", "KiB", 2, "lower"),
    "h1_new_upstream": ("New upstream connections opened during a steady-state HTTP/1.1 run", "", 0, "lower"),
    "share_canary_pct": ("Canary share over new users (random uid per request)", "%", 3, None),
    "share_error_pp": ("Canary share error, abs(share − 10 %)", "pp", 3, "lower"),
    "share_rps": ("Requests/s of the share run (wrk, a new random uid per request)", "req/s", 0, None),
    "sticky_pct": ("Stickiness: users who got the same variant again", "%", 2, "higher"),
    "h1_errors": ("Errors (socket errors + status >= 400) in the HTTP/1.1 runs", "", 0, "lower"),
    "h2_errors": ("Failed or non-2xx requests in the h2c runs", "", 0, "lower"),
    "lat_errors": ("Errors in the latency runs", "", 0, "lower"),
    "idle_failed": ("Idle connections that got no 200", "", 0, "lower"),
    "share_other": ("Share-run responses without a 200 and a variant", "", 0, "lower"),
    "sticky_failed": ("Stickiness requests that failed", "", 0, "lower"),
}
SUMMARY = ["h1_rps", "h2_rps", "h1_cpu_us", "h2_cpu_us", "h1_per_core", "h2_per_core", "h1_cpu_util", "added_p50_ms", "added_p99_ms", "rss_idle_kib",
           "rss_per_conn_kib", "h1_new_upstream", "share_error_pp", "sticky_pct"]


def last_json(path, tag):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        if line.startswith(tag + " "):
            found = json.loads(line[len(tag) + 1:])
    return found


def fail():
    sys.exit(1)


def parse_wrk(path):
    d = last_json(path, "WRKJSON") or fail()
    errors = d["connect"] + d["read"] + d["write"] + d["status"] + d["timeout"]
    print(d["requests"], d["duration_us"] / 1e6, errors)


def parse_h2load(path):
    text = open(path, errors="replace").read()
    fin = re.search(r"finished in ([\d.]+)(ms|s),", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not (fin and req and codes):
        fail()
    dur = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    ok = int(codes.group(1))
    failed = int(req.group(5)) + int(req.group(6)) + int(req.group(7)) + sum(int(codes.group(i)) for i in (2, 3, 4))
    print(ok, dur, failed)


def parse_oha(path):
    try:
        d = json.load(open(path))
    except (OSError, ValueError):
        fail()
    lat = d.get("latencyPercentiles") or fail()
    summary = d.get("summary", {})
    codes = d.get("statusCodeDistribution", {})
    # oha -z cuts the requests still in flight when the time is up; those are not errors
    errors = sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k)
    errors += sum(v for k, v in codes.items() if k != "200")
    p50, p99 = lat.get("p50"), lat.get("p99")
    if p50 is None or p99 is None:
        fail()
    print("%.4f %.4f %.1f %d" % (p50 * 1e3, p99 * 1e3, summary.get("requestsPerSec", 0.0), errors))


def parse_share(path):
    d = last_json(path, "SHAREJSON") or fail()
    print(d["stable"], d["canary"], d["other"], d["duration_us"] / 1e6)


def parse_sticky(path):
    d = last_json(path, "STICKYJSON") or fail()
    print(d["users"], d["same"], d["changed"], d["failed"])


def load_results(path):
    """figure -> target -> {round: value}; adds the derived figures."""
    data = defaultdict(lambda: defaultdict(dict))
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            data[r["figure"]][r["target"]][r["round"]] = r["value"]
    for q in ("p50", "p99"):
        src = data.get("lat_%s_ms" % q, {})
        direct = src.get("direct", {})
        for t, rounds in src.items():
            if t == "direct":
                continue
            for rnd, v in rounds.items():
                if rnd in direct:
                    data["added_%s_ms" % q][t][rnd] = v - direct[rnd]
    for proto in ("h1", "h2"):
        for t, rounds in data.get("%s_cpu_us" % proto, {}).items():
            for rnd, v in rounds.items():
                if v > 0:
                    data["%s_per_core" % proto][t][rnd] = 1e6 / v
    for t, rounds in data.get("share_canary_pct", {}).items():
        for rnd, v in rounds.items():
            data["share_error_pp"][t][rnd] = abs(v - SHARE_EXPECTED)
    return data


def med(data, fig, target):
    vals = list(data.get(fig, {}).get(target, {}).values())
    return statistics.median(vals) if vals else None


def capacity(path):
    data = load_results(path)
    meds = [med(data, "h1_rps", t) for t in TARGETS if t != "direct"]
    meds = [m for m in meds if m]
    if not meds:
        fail()
    print("%.0f" % min(meds))


def fmt(v, decimals):
    if v is None:
        return "—"
    if decimals == 0:
        return "{:,.0f}".format(v)
    return "{:,.{d}f}".format(v, d=decimals)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return "%.2f×" % (a / b)


def cell(data, fig, target, decimals, with_range=True):
    vals = list(data.get(fig, {}).get(target, {}).values())
    if not vals:
        return "—"
    m = statistics.median(vals)
    if not with_range or len(vals) == 1:
        return fmt(m, decimals)
    return "%s (%s – %s)" % (fmt(m, decimals), fmt(min(vals), decimals), fmt(max(vals), decimals))


def read_meta(path):
    meta, notes = {}, []
    for line in open(path):
        key, _, value = line.rstrip("\n").partition("\t")
        if key == "note":
            notes.append(value)
        else:
            meta[key] = value
    return meta, notes


def checks(data):
    """The issue's targets for canaryd: (what, needed, measured, verdict)."""
    out = []

    def m(fig, t):
        return med(data, fig, t)

    def verdict(ok):
        return "—" if ok is None else ("met" if ok else "**missed**")

    c, n, h = m("h1_rps", "canaryd"), m("h1_rps", "nginx"), m("h1_rps", "haproxy")
    out.append(("HTTP/1.1 throughput vs nginx", "≥ 1.10×", ratio(c, n), verdict(None if None in (c, n) else c >= 1.1 * n)))
    out.append(("HTTP/1.1 throughput vs HAProxy", "≥ 1.00×", ratio(c, h), verdict(None if None in (c, h) else c >= h)))
    c, n = m("h2_rps", "canaryd"), m("h2_rps", "nginx")
    out.append(("h2c throughput vs nginx", "≥ 1.00×", ratio(c, n), verdict(None if None in (c, n) else c >= n)))
    c, h = m("h1_cpu_us", "canaryd"), m("h1_cpu_us", "haproxy")
    out.append(("CPU per request (HTTP/1.1) vs HAProxy", "≤ 0.80×", ratio(c, h), verdict(None if None in (c, h) else c <= 0.8 * h)))
    c = m("added_p99_ms", "canaryd")
    others = [x for x in (m("added_p99_ms", "nginx"), m("added_p99_ms", "haproxy")) if x is not None]
    best = min(others) if others else None
    out.append(("added p99 latency", "≤ better of nginx/HAProxy (%s ms)" % fmt(best, 3), fmt(c, 3) + " ms",
                verdict(None if None in (c, best) else c <= best)))
    c = m("rss_per_conn_kib", "canaryd")
    out.append(("RSS per idle connection", "≤ 16 KiB", fmt(c, 2) + " KiB", verdict(None if c is None else c <= 16)))
    c = m("share_error_pp", "canaryd")
    out.append(("canary share error", "≤ 0.1 pp", fmt(c, 3) + " pp", verdict(None if c is None else c <= 0.1)))
    c = m("sticky_pct", "canaryd")
    out.append(("stickiness", "100 %", fmt(c, 2) + " %", verdict(None if c is None else c >= 100)))
    return out


def render(args):
    data = load_results(args.results)
    meta, notes = read_meta(args.meta)
    targets = [t for t in TARGETS if any(t in data.get(f, {}) for f in FIGURES)]
    smoke = meta.get("mode") == "smoke"
    L = []
    w = L.append
    w("# canaryd vs nginx vs HAProxy — side-by-side load comparison")
    w("")
    w("Generated by `benches/compare/run.sh%s` on %s (took %s s). Do not edit by hand: rerun the script."
      % (" --smoke" if smoke else "", meta.get("date", "?"), meta.get("elapsed_s", "?")))
    if smoke:
        w("")
        w("> **Smoke run**: very short runs that only prove the harness works; the numbers are not "
          "comparable and the share error over so few users is mostly sampling noise.")
    w("")
    w("The job, identical for every proxy: 90 % stable / 10 % canary, sticky by the `uid` cookie, "
      "keep-alive upstream pools, `X-Forwarded-For` (and `-Proto`, `-Host`, the chosen variant) added, "
      "in front of two nginx backends (one worker each, `return 200`, 7-byte body, header `X-Variant`). "
      "The proxy under test is pinned to CPU 0 with one worker/thread; the load generator, both backends "
      "and the helper scripts to CPU 1. See `benches/compare/README.md` for the equivalences and caveats.")
    w("")
    w("Medians over %s rounds in which the targets take turns (rotated order), latency over %s, "
      "RSS over %s (a fresh proxy process each); share and stickiness one run each. Ratios are of medians; "
      "the per-figure tables below give min and max."
      % (meta.get("rounds", "?"), meta.get("lat_rounds", "?"), meta.get("rss_rounds", "?")))
    w("")

    others = med(data, "h1_cpu0_busy", "direct")
    if others is not None and others > 10:
        w("> **The machine was not quiet**: during the direct runs, when nothing of the benchmark runs on CPU 0, "
          "other processes kept CPU 0 %.0f %% busy (median). The proxies then got only part of their core (see "
          "*Proxy CPU use*), so requests/s and latency are understated and noisy; CPU per request and "
          "requests/s per busy core are the figures to trust." % others)
        w("")
    w("## Summary (medians)")
    w("")
    head = ["figure"] + [LABEL[t] for t in targets] + ["canaryd / nginx", "canaryd / HAProxy"]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for fig in SUMMARY:
        if fig not in data:
            continue
        title, unit, dec, _ = FIGURES[fig]
        row = ["%s%s" % (title.split(" (")[0], " (%s)" % unit if unit else "")]
        row += [cell(data, fig, t, dec, with_range=False) for t in targets]
        c = med(data, fig, "canaryd")
        row += [ratio(c, med(data, fig, "nginx")), ratio(c, med(data, fig, "haproxy"))]
        w("| " + " | ".join(row) + " |")
    w("")

    w("## canaryd against the issue's targets")
    w("")
    w("| target | needed | canaryd | verdict |")
    w("|---|---|---|---|")
    for what, needed, got, verdict in checks(data):
        w("| %s | %s | %s | %s |" % (what, needed, got, verdict))
    w("")

    w("## Figures")
    for fig, (title, unit, dec, better) in FIGURES.items():
        if fig not in data:
            continue
        w("")
        w("### %s%s" % (title, " [%s]" % unit if unit else ""))
        if better:
            w("")
            w("%s is better." % better.capitalize())
        w("")
        w("| target | median | min | max | rounds |")
        w("|---|---|---|---|---|")
        for t in targets:
            vals = list(data[fig].get(t, {}).values())
            if not vals:
                continue
            w("| %s | %s | %s | %s | %d |" % (LABEL[t], fmt(statistics.median(vals), dec), fmt(min(vals), dec),
                                             fmt(max(vals), dec), len(vals)))
        c = med(data, fig, "canaryd")
        if c is not None and (med(data, fig, "nginx") is not None or med(data, fig, "haproxy") is not None):
            w("")
            w("canaryd / nginx: %s; canaryd / HAProxy: %s" % (ratio(c, med(data, fig, "nginx")),
                                                            ratio(c, med(data, fig, "haproxy"))))

    w("")
    w("## Machine and versions")
    w("")
    for key, label in [("lscpu", "CPU (lscpu)"), ("memory", "memory"), ("kernel", "kernel"),
                       ("load_before", "load average before"), ("load_after", "load average after"),
                       ("v_canaryd", "canaryd"), ("v_nginx", "nginx"), ("v_haproxy", "HAProxy"), ("v_wrk", "wrk"),
                       ("v_h2load", "h2load"), ("v_oha", "oha"), ("v_python", "Python")]:
        w("- %s: %s" % (label, meta.get(key, "?").replace(";", "; ")))
    for key in sorted(k for k in meta if k.startswith("pin_")):
        w("- %s pinned: %s" % (LABEL.get(key[4:], key[4:]), meta[key]))
    w("")
    w("Parameters: %s s per load run after %s s warm-up, wrk/oha %s connections, h2load %s, "
      "latency rate %s req/s (half the weakest proxy's median HTTP/1.1 capacity), %s idle connections, "
      "%s new users for the share, %s users re-requested for stickiness. nginx h2c: %s."
      % (meta.get("duration"), meta.get("warmup"), meta.get("conns"), meta.get("h2"), meta.get("rate") or "—",
         meta.get("idle_conns"), meta.get("share_requests"), meta.get("sticky_users"), meta.get("nginx_h2")))
    if notes:
        w("")
        w("## Warnings during the run")
        w("")
        seen = set()
        for n in notes:
            if n not in seen:
                seen.add(n)
                w("- " + n)

    w("")
    w("## Commands")
    w("")
    w("As run (round 1 of each phase; `$WORK` is the run's temp dir, the configs in it are the templates "
      "of `benches/compare/` with the ports filled in):")
    w("")
    w("```sh")
    here = args.here
    seen = set()
    for line in open(args.commands):
        phase, target, rnd, cmd = line.rstrip("\n").split("\t", 3)
        cmd = cmd.replace(args.work, "$WORK").replace(here + "/", "benches/compare/").strip()
        if rnd not in ("0", "1") or cmd in seen:
            continue
        seen.add(cmd)
        w("# %s, %s" % (phase, target))
        w(cmd)
    w("```")
    w("")
    w("The per-round values are in the `.jsonl` file next to this report.")
    open(args.out, "w").write("\n".join(L) + "\n")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("parse-wrk", "parse-h2load", "parse-oha", "parse-share", "parse-sticky", "capacity"):
        sub.add_parser(name).add_argument("file")
    r = sub.add_parser("render")
    r.add_argument("--results", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--commands", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--here", default=__file__.rsplit("/", 1)[0])
    args = ap.parse_args()
    try:
        {
            "parse-wrk": lambda: parse_wrk(args.file),
            "parse-h2load": lambda: parse_h2load(args.file),
            "parse-oha": lambda: parse_oha(args.file),
            "parse-share": lambda: parse_share(args.file),
            "parse-sticky": lambda: parse_sticky(args.file),
            "capacity": lambda: capacity(args.file),
            "render": lambda: render(args),
        }[args.cmd]()
    except (KeyError, ValueError, OSError) as e:
        if args.cmd == "render":
            raise
        print("report.py %s: %s" % (args.cmd, e), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
