-- Store a conversation's state in a cache entry if it is newer than what is there.
-- KEYS[1]: the entry (a hash: time, order, pb)
-- ARGV[1]: the state's update time (ms), ARGV[2]: its order within that millisecond (last
-- sequence, then closed after open), ARGV[3]: its bytes, ARGV[4]: time to live in seconds,
-- ARGV[5]: "1" to create a missing entry, "0" to only refresh an existing one.
-- Returns 1 when stored, 0 when the entry was as new or newer, or missing and not created.
local fields = redis.call("HMGET", KEYS[1], "time", "order")
if fields[1] == false then
  if ARGV[5] ~= "1" then
    return 0
  end
else
  local time, order = tonumber(fields[1]), tonumber(fields[2])
  local new_time, new_order = tonumber(ARGV[1]), tonumber(ARGV[2])
  if time > new_time or (time == new_time and order >= new_order) then
    return 0
  end
end
redis.call("HSET", KEYS[1], "time", ARGV[1], "order", ARGV[2], "pb", ARGV[3])
redis.call("EXPIRE", KEYS[1], tonumber(ARGV[4]))
return 1
