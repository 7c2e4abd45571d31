-- wrk script: POST one Functions invocation (a KeyNearExpiry event, string-encoded as the
-- host sends it) per request. The body is read from examples/invocations/.
local f = assert(io.open("examples/invocations/KeyVaultEvents.key-near-expiry.json", "r"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Azure-Functions-InvocationId"] = "bench"
