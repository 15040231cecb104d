-- wrk script: POST one fixed request body to the URL given on the command line.
-- Adapted from ../shared/peers/mlserver/post.lua (same output lines, same exact percentiles)
-- so our figures and MLServer's are read the same way. Differences: the body is a
-- pandas-records JSON list (`[{"tensor": [30 floats]}]`) and the Content-Type is ours.
--
--   WRK_BODY_FILE      file holding the request body (required)
--   WRK_CONTENT_TYPE   Content-Type header (default: application/json; format=pandas-records)
--
-- done() prints machine-readable lines prefixed with "WRK ". errors_status counts responses
-- with a status >= 400 (wrk's own rule); no response() callback is defined, because one makes
-- wrk run Lua per response and steal CPU from the server on a 2-core machine.
local path = os.getenv("WRK_BODY_FILE")
assert(path, "set WRK_BODY_FILE to the request body file")
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json; format=pandas-records"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK requests %d\n", summary.requests))
  io.write(string.format("WRK duration_us %d\n", summary.duration))
  io.write(string.format("WRK bytes %d\n", summary.bytes))
  io.write(string.format("WRK mean_us %.1f\n", latency.mean))
  io.write(string.format("WRK p50_us %d\n", latency:percentile(50)))
  io.write(string.format("WRK p90_us %d\n", latency:percentile(90)))
  io.write(string.format("WRK p99_us %d\n", latency:percentile(99)))
  io.write(string.format("WRK max_us %d\n", latency.max))
  io.write(string.format("WRK errors_connect %d\n", e.connect))
  io.write(string.format("WRK errors_read %d\n", e.read))
  io.write(string.format("WRK errors_write %d\n", e.write))
  io.write(string.format("WRK errors_status %d\n", e.status))
  io.write(string.format("WRK errors_timeout %d\n", e.timeout))
end
