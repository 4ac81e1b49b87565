-- wrk script for the canary-share figure: every request is a new user (a fresh random
-- 32-hex uid cookie); responses are counted by the backend's `X-Variant` header, and
-- after `target` responses (first script argument) the thread stops and creates the file
-- named by the third argument, on which run.sh sends wrk SIGINT (wrk's main thread would
-- otherwise sleep for the whole -d). done() prints `SHAREJSON {...}`.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  target = tonumber(args[1]) or 1000000
  math.randomseed(tonumber(args[2]) or os.time())
  marker = args[3]
  stable, canary, other, responses = 0, 0, 0, 0
end

function request()
  local uid = string.format("%08x%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format(nil, nil, { ["Cookie"] = "uid=" .. uid })
end

function response(status, headers, body)
  local v = headers["X-Variant"] or headers["x-variant"]
  if status ~= 200 then
    other = other + 1
  elseif v == "stable" then
    stable = stable + 1
  elseif v == "canary" then
    canary = canary + 1
  else
    other = other + 1
  end
  responses = responses + 1
  if responses == target then
    wrk.thread:stop()
    if marker then
      local f = io.open(marker, "w")
      if f then
        f:write("done\n")
        f:close()
      end
    end
  end
end

function done(summary, latency, requests)
  local s, c, o = 0, 0, 0
  for _, t in ipairs(threads) do
    s = s + t:get("stable")
    c = c + t:get("canary")
    o = o + t:get("other")
  end
  io.write(string.format('SHAREJSON {"stable":%d,"canary":%d,"other":%d,"duration_us":%d}\n', s, c, o,
    summary.duration))
end
