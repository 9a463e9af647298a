-- Prints wrk's totals and latency percentiles (µs) as key=value lines for bench/run.sh.
-- With WRK_DELAY_MS set, every connection waits that long between requests, which turns wrk's
-- closed loop into a roughly fixed offered load (connections / delay).
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "")
if delay_ms and delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d\n", summary.requests))
  io.write(string.format("RESULT duration_us=%d\n", summary.duration))
  io.write(string.format("RESULT rps=%.1f\n", summary.requests / (summary.duration / 1e6)))
  io.write(string.format("RESULT err_connect=%d\n", e.connect))
  io.write(string.format("RESULT err_read=%d\n", e.read))
  io.write(string.format("RESULT err_write=%d\n", e.write))
  io.write(string.format("RESULT err_status=%d\n", e.status))
  io.write(string.format("RESULT err_timeout=%d\n", e.timeout))
  io.write(string.format("RESULT p50_us=%d\n", latency:percentile(50)))
  io.write(string.format("RESULT p99_us=%d\n", latency:percentile(99)))
  io.write(string.format("RESULT p999_us=%d\n", latency:percentile(99.9)))
  io.write(string.format("RESULT max_us=%d\n", latency.max))
end
