-- GCRA (generic cell rate algorithm) over several limits at once, atomically.
-- KEYS[i]: one key per limit. ARGV[2i-1]: emission interval in microseconds (1e6 / rate);
-- ARGV[2i]: burst (requests allowed at once from idle).
-- Either every limit admits the request and all are charged, or none is charged.
-- Returns {allowed (1|0), retry_after_us, index of each limit that refused...}.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local new_tats = {}
local refused = {}
local retry_after = 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    refused[#refused + 1] = i
    if allow_at - now > retry_after then
      retry_after = allow_at - now
    end
  end
  new_tats[i] = new_tat
end
if #refused == 0 then
  for i, key in ipairs(KEYS) do
    -- %.0f: tostring() would print large numbers in exponent form and lose precision.
    local ttl_ms = math.ceil((new_tats[i] - now) / 1000) + 1
    redis.call('SET', key, string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
  end
  return {1, 0}
end
local reply = {0, retry_after}
for _, index in ipairs(refused) do
  reply[#reply + 1] = index
end
return reply
