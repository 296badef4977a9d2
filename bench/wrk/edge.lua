-- wrk script of edge_bench: calls through edge-proxy over many subjects, each consume with its
-- own idempotency key (a repeated key would be a replay, not a consume), and prints the figures
-- in one line edge_bench parses, in microseconds and with every error class summed.
--
-- Arguments (after `--`): read|consume, a run prefix unique to this wrk run, a file of subjects
-- (one UUID a line), the metric.

local counter = 0
local subjects = {}
local mode, prefix, metric

-- The threads number themselves so that their keys differ.
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  mode, prefix, metric = args[1], args[2], args[4]
  for line in io.lines(args[3]) do
    subjects[#subjects + 1] = line
  end
end

function request()
  counter = counter + 1
  -- Up to 64 threads get disjoint keys; each thread walks the subjects from its own place.
  local n = counter * 64 + (thread_id or 0)
  local subject = subjects[((counter + (thread_id or 0) * 7919) % #subjects) + 1]
  if mode == "consume" then
    local body = string.format(
      '{"subject":"%s","amount":"1","idempotencyKey":"%s-%d"}', subject, prefix, n)
    return wrk.format("POST", "/v1/quotas/" .. metric .. ":consume", nil, body)
  end
  return wrk.format("GET", "/v1/quotas/" .. metric .. "?subject=" .. subject)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "edge-bench requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.status + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
