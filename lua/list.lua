--[[ list: one page of live agents of one type, ordered by name.
KEYS[1] type zset   KEYS[2] optional: capability zset that agents must be in
Derived inside from ARGV[1] (hash tag {ns}: KEYS[1]'s slot): each listed agent's hash.
ARGV[1] namespace prefix   ARGV[2] start after this name ("" = from the first)
ARGV[3] names to examine (the page size)   ARGV[4] filters as JSON, see `matches` in agent.lua
Returns {last name examined ("" when the type has no more), names examined, then name and
record for each match}. Filtered-out
and expired agents use up the page, so a page may hold fewer records; paging by name is stable
while agents come and go.
]]
--@include agent.lua
local P, after, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local filters = cjson.decode(ARGV[4])
local required = {KEYS[2]}  -- empty without a capability
local start = after == '' and '-' or '(' .. after
local names = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, count)
local now = now_ms()
local reply = {#names < count and '' or names[#names], #names}
for _, name in ipairs(names) do
  local flat = select_agent(P, name, now, filters, required)
  if flat then reply[#reply + 1] = name; reply[#reply + 1] = flat end
end
return reply
