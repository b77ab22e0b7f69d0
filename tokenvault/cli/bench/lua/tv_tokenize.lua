-- wrk script: tokenvault POST /v1/tokenize, BATCH records of fresh values per request.
-- Environment: KEY (the owner's API key), and common.lua's.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("KEY")}
local counter = 0

function request()
  local records = {}
  for j = 1, BATCH do
    counter = counter + 1
    records[j] = string.format('{"ssn":"%s-%d-%012d","note":"bench"}', RUN, tid, counter)
  end
  return wrk.format("POST", nil, headers, '{"records":[' .. table.concat(records, ",") .. ']}')
end

function response(status, headers, body)
  count_answer(status == 200)
end
