-- wrk script: tokenvault POST /v1/detokenize, BATCH tokens per request, taken in turn from the
-- TOKENS file (one per line). A good answer found every token.
-- Environment: KEY (the owner's API key), TOKENS, and common.lua's.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("KEY")}
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local i = nil

function request()
  if i == nil then i = (tid * 7919) % #tokens end
  local chosen = {}
  for j = 1, BATCH do
    i = i % #tokens + 1
    chosen[j] = '"' .. tokens[i] .. '"'
  end
  return wrk.format("POST", nil, headers, '{"tokens":[' .. table.concat(chosen, ",") .. ']}')
end

function response(status, headers, body)
  count_answer(status == 200 and body:find('"found":true', 1, true) ~= nil
    and body:find('"found":false', 1, true) == nil)
end
