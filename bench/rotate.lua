-- wrk script for the benchmark: the same small non-streaming chat completion POST on
-- every path, with the Authorization header rotating through many users' tokens (one
-- per line in $BENCH_TOKENS), so a relay cannot answer from one hot cache entry.
-- Requests are formatted once in init(); request() only picks the next one.
-- done() prints one JSON line that bench/run.py reads.

local requests = {}
local count = 0
local next_index = 0

function init(args)
  local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
  local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
  local file = os.getenv("BENCH_TOKENS")
  local offset = tonumber(os.getenv("BENCH_OFFSET") or "0")
  local tokens = {}
  if file and file ~= "" then
    for line in io.lines(file) do
      if line ~= "" then tokens[#tokens + 1] = line end
    end
  end
  if #tokens == 0 then tokens[1] = "none" end
  for i = 1, #tokens do
    local token = tokens[((i - 1 + offset) % #tokens) + 1]
    requests[i] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. token,
    }, body)
  end
  count = #requests
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
    .. '"status_errors": %d, "timeouts": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
