-- wrk script: etcd v3 JSON gateway, one put-if-absent transaction of BATCH fresh keys per request
-- (all or nothing in etcd). A good answer has "succeeded":true.
-- Environment: common.lua's.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local headers = {["Content-Type"] = "application/json"}
local VALUE = b64("4111111111111111")
local counter = 0

function request()
  local compares, puts = {}, {}
  for j = 1, BATCH do
    counter = counter + 1
    local key = b64(string.format("tok/%s/%d/%012d", RUN, tid, counter))
    compares[j] = '{"target":"CREATE","key":"' .. key .. '","create_revision":"0"}'
    puts[j] = '{"request_put":{"key":"' .. key .. '","value":"' .. VALUE .. '"}}'
  end
  return wrk.format("POST", nil, headers,
    '{"compare":[' .. table.concat(compares, ",") .. '],"success":[' .. table.concat(puts, ",") .. ']}')
end

function response(status, headers, body)
  count_answer(status == 200 and body:find('"succeeded":true', 1, true) ~= nil)
end
