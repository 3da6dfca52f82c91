--[[ discover: live agents having every capability, passing the filters, healthiest first.
KEYS[1..n] capability zsets (or only the namespace health zset when no capability is asked)
Derived inside from ARGV[1] (hash tag {ns}: KEYS[1]'s slot): each candidate's hash.
ARGV[1] namespace prefix   ARGV[2] results still wanted (per run)   ARGV[3] offset: candidates
of the driver zset already walked (with runs: one per run, comma-separated, -1 = run done)
ARGV[4] scan budget: candidates this call may examine (shared by the runs)
ARGV[5] driver: index in KEYS of the zset to walk (0 = pick the smallest)
ARGV[6] filters as JSON, see `matches` in agent.lua
ARGV[7] optional origin, a fraction of the driver's size in [0, 1), and ARGV[8] optional runs
(default 1): the driver's health order, rotated to start at the origin, is cut into `runs`
equal segments and each is walked from its start. Ranked Discover: origin 0, one run. BALANCED
passes a random origin and several runs: every agent is equally often near a segment start,
and the results mix agents from all over the health order.
Returns {next offset (-1 when the run has walked its segment; with runs the comma-joined list),
driver index, then score, name, record for each match}; the score (lower is healthier) lets
the server merge namespaces.
Walks a chunk at a time (ZRANGE without scores: formatting them costs as much as the names)
and checks each chunk against every other zset with one ZMSCORE (C speed per member; one ZSCORE
call per candidate cost 3x more), so a query for a few results examines a few candidates
instead of materialising an intersection. Chunks are sized from the hit rate seen so far. The
budget bounds each call; the server continues from the next offsets while it needs more.
]]
--@include agent.lua
local P, wanted, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
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

local size = redis.call('ZCARD', KEYS[driver])
local origin = math.floor(tonumber(ARGV[7] or '0') * size)
local runs = tonumber(ARGV[8] or '1')
local now = now_ms()
local reply = {-1, driver}

-- Walks segment [first, first + length) of the rotated order from `offset` until `wanted`
-- matches or `budget` candidates; appends the matches to `reply`. Returns the next offset, or
-- -1 when the segment is done.
local function walk(first, length, offset, budget)
  local found, examined, hits = 0, 0, 0
  while found < wanted and examined < budget and offset < length do
    local rank = (origin + first + offset) % size
    local chunk = math.min(chunk_size(wanted - found, hits, examined, #others > 0),
                           budget - examined, length - offset, size - rank)  -- no chunk wraps
    local names = redis.call('ZRANGE', KEYS[driver], rank, rank + chunk - 1)
    local alive = having_all(names, others)
    hits = hits + #alive
    local used = #names  -- candidates consumed; fewer when the last result comes mid-chunk
    local last = nil
    for _, name in ipairs(alive) do
      local flat = load_match(P, name, now, filters)
      if flat then
        reply[#reply + 1] = redis.call('ZSCORE', KEYS[driver], name)
        reply[#reply + 1] = name
        reply[#reply + 1] = flat
        found = found + 1
        if found >= wanted then last = name; break end
      end
    end
    if last then  -- stop right after the last result, so the next call starts there
      for i = #names, 1, -1 do if names[i] == last then used = i; break end end
    end
    offset, examined = offset + used, examined + used
    if #names < chunk then return -1 end  -- the driver shrank under us: done
  end
  return offset < length and offset or -1
end

local offsets = {}
for o in string.gmatch(ARGV[3], '[^,]+') do offsets[#offsets + 1] = tonumber(o) end
local active = 0
for j = 1, runs do if offsets[j] >= 0 then active = active + 1 end end
for j = 1, runs do
  if offsets[j] >= 0 then
    local first = math.floor((j - 1) * size / runs)
    offsets[j] = walk(first, math.floor(j * size / runs) - first, offsets[j],
                      math.max(math.floor(budget / active), 1))
  end
end
reply[1] = runs == 1 and offsets[1] or table.concat(offsets, ',')
return reply
