--[[ due: namespaces whose earliest lease deadline (a lower bound) has come, by Redis's clock.
KEYS[1] the schedule zset (namespace -> ms)   ARGV[1] at most this many
Read-only. The sweeper visits only these namespaces, not every namespace.
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
