-- wrk script for the throughput runs: every request carries `Cookie: uid=<32 hex>` taken
-- round-robin from a pool of 1,000 random users built once in init(), so the proxies
-- split about 90/10 while wrk itself spends almost nothing per request.
-- done() prints one line `WRKJSON {...}` that run.sh/report.py parse.
local pool = {}
local n = 0
local i = 0

function init(args)
  math.randomseed(tonumber(args[1]) or os.time())
  local users = tonumber(args[2]) or 1000
  for k = 1, users do
    local uid = string.format("%08x%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
      math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    pool[k] = wrk.format(nil, nil, { ["Cookie"] = "uid=" .. uid })
  end
  n = users
end

function request()
  i = i % n + 1
  return pool[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
