--[[ stats: agent counts of one namespace and its current revision (read-only).
KEYS[1] counts hash   KEYS[2] health zset   KEYS[3] log
Returns {agents, counts as flat "t:<type>"/"s:<status>" -> n list, last revision or ""}.
Counts include agents past their deadline that the sweeper has not reaped yet (under a second).
]]
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
return {redis.call('ZCARD', KEYS[2]), redis.call('HGETALL', KEYS[1]), last[1] and last[1][1] or ''}
