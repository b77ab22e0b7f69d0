-- Shared by the wrk scripts of `tokenvault bench` (loaded with dofile from BENCH_LUA_DIR):
-- thread ids, answer counting, base64, and the one RESULT line that the bench parses.
-- Rules: counts are raw (requests, good answers, wrong answers, socket errors, non-2xx); the
-- bench computes rates from them. A wrong answer is a 2xx whose body is not the expected one.
-- Environment: BATCH (keys per request, default 1), RUN (unique to this wrk process).
BATCH = tonumber(os.getenv("BATCH") or "1")
RUN = os.getenv("RUN") or "run"

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  ok, not_ok = 0, 0
end

function count_answer(good)
  if good then ok = ok + 1 else not_ok = not_ok + 1 end
end

local CH = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local chars = {}
for i = 1, 64 do chars[i] = CH:sub(i, i) end
local floor = math.floor

function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = chars[floor(v / 262144) % 64 + 1] .. chars[floor(v / 4096) % 64 + 1] ..
      (b and chars[floor(v / 64) % 64 + 1] or "=") .. (c and chars[v % 64 + 1] or "=")
  end
  return table.concat(out)
end

done = function(summary, latency, requests)
  local ok_total, not_ok_total = 0, 0
  for _, t in ipairs(threads) do
    ok_total = ok_total + t:get("ok")
    not_ok_total = not_ok_total + t:get("not_ok")
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT batch=%d requests=%d ok=%d not_ok=%d errors=%d non2xx=%d duration_s=%.6f" ..
    " p50_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    BATCH, summary.requests, ok_total, not_ok_total, e.connect + e.read + e.write + e.timeout,
    e.status, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
