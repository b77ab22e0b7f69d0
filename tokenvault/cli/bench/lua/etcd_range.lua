-- wrk script: etcd v3 JSON gateway, linearizable reads of the preloaded keys pre/000000 ..
-- pre/(N-1), taken in turn: one range request (URL .../v3/kv/range) when BATCH is 1, else one
-- transaction of BATCH range requests (URL .../v3/kv/txn). A good answer has "kvs".
-- Environment: N (the number of preloaded keys), and common.lua's.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local headers = {["Content-Type"] = "application/json"}
local N = tonumber(os.getenv("N") or "20000")
local i = nil

local function next_key()
  i = (i + 1) % N
  return b64(string.format("pre/%06d", i))
end

function request()
  if i == nil then i = (tid * 7919) % N end
  if BATCH == 1 then
    return wrk.format("POST", nil, headers, '{"key":"' .. next_key() .. '"}')
  end
  local ranges = {}
  for j = 1, BATCH do ranges[j] = '{"request_range":{"key":"' .. next_key() .. '"}}' end
  return wrk.format("POST", nil, headers, '{"success":[' .. table.concat(ranges, ",") .. ']}')
end

function response(status, headers, body)
  count_answer(status == 200 and body:find('"kvs"', 1, true) ~= nil)
end
