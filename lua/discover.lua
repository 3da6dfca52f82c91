--[[ discover: live agents having every capability, passing the filters, healthiest first.
KEYS[1..n] capability zsets (or only the namespace health zset when no capability is asked)
ARGV[1] namespace prefix   ARGV[2] results still wanted   ARGV[3] start rank in the driver zset
ARGV[4] scan budget: candidates this call may examine   ARGV[5] driver: index in KEYS of the
zset to walk (0 = pick the smallest)   ARGV[6] filters as JSON, see `matches` in agent.lua
Returns {next rank (-1 when the driver is exhausted), driver index, then score, name, record
for each match}; the score (lower is healthier) lets the server merge namespaces.
Walks the smallest zset in health order and checks the others with ZSCORE, so a query for a
few results examines a few candidates instead of materialising an intersection. The budget
bounds each call; the server continues from the next rank in a new call while it needs more.
]]
--@include agent.lua
local P, wanted, rank, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local driver = tonumber(ARGV[5])
local filters = cjson.decode(ARGV[6])
if driver == 0 then
  driver = 1
  local smallest = redis.call('ZCARD', KEYS[1])
  for i = 2, #KEYS do
    local n = redis.call('ZCARD', KEYS[i])
    if n < smallest then driver, smallest = i, n end
  end
end
local others = {}
for i = 1, #KEYS do if i ~= driver then others[#others + 1] = KEYS[i] end end

local now = now_ms()
local reply = {-1, driver}
local found, examined = 0, 0
while found < wanted and examined < budget do
  local chunk = math.min(budget - examined, math.max(wanted - found, 16) * 2)
  local names = redis.call('ZRANGE', KEYS[driver], rank, rank + chunk - 1, 'WITHSCORES')
  for i = 1, #names, 2 do
    local name = names[i]
    rank = rank + 1
    examined = examined + 1
    local flat = select_agent(P, name, now, filters, others)
    if flat then
      reply[#reply + 1] = names[i + 1]
      reply[#reply + 1] = name
      reply[#reply + 1] = flat
      found = found + 1
      if found >= wanted then break end
    end
  end
  if found < wanted and #names < 2 * chunk then
    return reply  -- driver exhausted
  end
end
reply[1] = rank
return reply
