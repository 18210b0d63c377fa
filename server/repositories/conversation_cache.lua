-- Store a conversation's state in a cache entry if it is newer than what is there.
-- KEYS[1]: the entry (a hash: order, time, pb)
-- ARGV[1]: the state's order (last sequence, then closed after open), ARGV[2]: its update
-- time in ms (only to tell apart states of equal order), ARGV[3]: its bytes, ARGV[4]: time to
-- live in seconds, ARGV[5]: "1" to create a missing entry, "0" to only refresh an existing one.
-- Returns 1 when stored, 0 when the entry was as new or newer, or missing and not created.
local fields = redis.call("HMGET", KEYS[1], "order", "time")
if fields[1] == false then
  if ARGV[5] ~= "1" then
    return 0
  end
else
  local order, time = tonumber(fields[1]), tonumber(fields[2])
  local new_order, new_time = tonumber(ARGV[1]), tonumber(ARGV[2])
  if order > new_order or (order == new_order and time >= new_time) then
    return 0
  end
end
redis.call("HSET", KEYS[1], "order", ARGV[1], "time", ARGV[2], "pb", ARGV[3])
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[4]))
return 1
