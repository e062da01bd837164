-- wrk script for B1: POST pre-signed webhook bodies, each once, in order.
--
--   wrk -t1 -c8 -d10s --latency -s post.lua URL -- BODIES_FILE START
--
-- BODIES_FILE holds one request per line: "<X-Hub-Signature-256>\t<body>". Requests use lines
-- START+1, START+2, ... (wrapping around at the end of the file), so consecutive runs given
-- consecutive START values never send a body twice. done() prints how many requests were
-- issued ("issued N"), which may exceed the responses wrk counts by those still in flight when
-- the run ended.

local signatures, bodies = {}, {}
local count = 0
local threads = {}
-- Globals, so that done() can read them from each thread with thread:get().
next_index, started_at = 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\t", 1, true)
    count = count + 1
    signatures[count] = line:sub(1, tab - 1)
    bodies[count] = line:sub(tab + 1)
  end
  started_at = tonumber(args[2] or "0")
  next_index = started_at
end

function request()
  local k = (next_index % count) + 1
  next_index = next_index + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Hub-Signature-256"] = signatures[k],
  }, bodies[k])
end

function done(summary, latency, requests)
  local issued = 0
  for _, thread in ipairs(threads) do
    issued = issued + (thread:get("next_index") - thread:get("started_at"))
  end
  io.write(string.format("issued %d\n", issued))
end
