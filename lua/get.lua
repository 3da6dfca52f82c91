--[[ get: one live agent's record (read-only).
KEYS[1] agent hash
Returns the record as a flat field/value list, or an empty list when the agent is unknown or
past its deadline (an expired agent is invisible even before the sweeper reaps it).
]]
--@include agent.lua
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 or not is_live(to_map(flat), now_ms()) then return {} end
return flat
