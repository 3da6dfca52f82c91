-- Shared helpers for the registry scripts, pulled in by `--@include agent.lua`.
-- K (key suffixes and count fields), F (agent hash fields), EF (change-log fields) and IF
-- (inbox fields) come from server/keys.py, EV (event types) and ST (statuses) from the proto,
-- all prepended by the script loader (server/scripts.py).
-- A writing script declares its keys (NK, AK: positions from keys.py) and the helpers take
-- them as N (the namespace's keys, and its prefix N.P for keys only the script can derive:
-- capability and type zsets named in a record, agents found in an index) and A (one agent's).
-- P is always the namespace prefix "sr:{<namespace>}:".
local unpack = unpack or table.unpack  -- Lua 5.1 (Redis) and 5.4 (embedded lupa)

local function namespace_keys(P)
  local N = {P = P}
  for name, i in pairs(NK) do N[name] = KEYS[i] end
  return N
end

-- The agent a script is about, as declared in KEYS.
local function declared_agent_keys()
  return {agent = KEYS[AK.agent], lease = KEYS[AK.lease], inbox = KEYS[AK.inbox]}
end

-- An agent found in an index (reap.lua): its keys, derived from the prefix.
local function derived_agent_keys(N, name)
  return {agent = N.P .. K.AGENT .. name, lease = N.P .. K.LEASE .. name,
          inbox = N.P .. K.INBOX .. name}
end

local HEALTHY, UNHEALTHY, DEGRADED = ST.HEALTHY, ST.UNHEALTHY, ST.DEGRADED
-- Order of statuses in results: HEALTHY, DEGRADED, UNHEALTHY, unknown.
local STATUS_RANK = {[HEALTHY] = 0, [DEGRADED] = 1, [UNHEALTHY] = 2}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A stream id Redis accepts: "<ms>-<seq>", each part at most 2^64 - 1 (compared as text:
-- Lua numbers are doubles and cannot hold it).
local U64_MAX = '18446744073709551615'
local function u64_text(s)
  s = string.gsub(s, '^0+(%d)', '%1')
  return #s < 20 or (#s == 20 and s <= U64_MAX)
end
local function valid_stream_id(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return ms ~= nil and u64_text(ms) and u64_text(seq)
end

local function to_map(flat)
  local m = {}
  for i = 1, #flat, 2 do m[flat[i]] = flat[i + 1] end
  return m
end

local function to_flat(m)
  local flat = {}
  for k, v in pairs(m) do flat[#flat + 1] = k; flat[#flat + 1] = v end
  return flat
end

local function each_capability(caps, fn)
  if caps == nil or caps == '' then return end
  for cap in string.gmatch(caps, '[^,]+') do fn(cap) end
end

local function clamp(x, lo, hi)
  if x < lo then return lo elseif x > hi then return hi end
  return x
end

-- Lower is healthier: status rank, then success rate (1e-4 steps, descending), then average
-- duration (0.01 ms steps, ascending). Integers below 2^53, so the order is exact.
-- An agent that reported no executions yet counts as fully successful.
local function health_score(rec)
  local rank = STATUS_RANK[tonumber(rec[F.status])] or 3
  local rate = tonumber(rec[F.success_rate]) or 0
  if (tonumber(rec[F.total_executions]) or 0) == 0 and rate == 0 then rate = 1 end
  local miss = clamp(10000 - math.floor(rate * 10000 + 0.5), 0, 10000)
  local dur = clamp(math.floor((tonumber(rec[F.avg_duration_ms]) or 0) * 100 + 0.5), 0, 99999999)
  return rank * 1e13 + miss * 1e8 + dur
end

-- Adds the agent to the health, capability and type indexes and the per-namespace counts.
local function index_add(N, name, rec)
  local score = health_score(rec)
  redis.call('ZADD', N.health, score, name)
  each_capability(rec[F.capabilities], function(cap)
    redis.call('ZADD', N.P .. K.CAPABILITY .. cap, score, name)
  end)
  redis.call('ZADD', N.P .. K.TYPE .. rec[F.agent_type], 0, name)
  redis.call('HINCRBY', N.counts, K.TYPE_COUNT .. rec[F.agent_type], 1)
  redis.call('HINCRBY', N.counts, K.STATUS_COUNT .. rec[F.status], 1)
end

local function index_remove(N, name, rec)
  redis.call('ZREM', N.health, name)
  redis.call('ZREM', N.deadlines, name)
  each_capability(rec[F.capabilities], function(cap)
    redis.call('ZREM', N.P .. K.CAPABILITY .. cap, name)
  end)
  redis.call('ZREM', N.P .. K.TYPE .. rec[F.agent_type], name)
  redis.call('HINCRBY', N.counts, K.TYPE_COUNT .. rec[F.agent_type], -1)
  redis.call('HINCRBY', N.counts, K.STATUS_COUNT .. rec[F.status], -1)
end

-- Re-scores an agent whose status or telemetry changed (same capabilities and type).
local function index_rescore(N, name, old, new)
  local before, after = health_score(old), health_score(new)
  if before ~= after then
    redis.call('ZADD', N.health, after, name)
    each_capability(new[F.capabilities], function(cap)
      redis.call('ZADD', N.P .. K.CAPABILITY .. cap, after, name)
    end)
  end
  if old[F.status] ~= new[F.status] then
    redis.call('HINCRBY', N.counts, K.STATUS_COUNT .. old[F.status], -1)
    redis.call('HINCRBY', N.counts, K.STATUS_COUNT .. new[F.status], 1)
  end
end

-- The lease key expires at the deadline itself (PXAT, not PX): Redis dates a relative TTL from
-- the script's start, which can be a millisecond before TIME, and an `expired` event arriving
-- before the deadline would be ignored by reap.lua and left to the sweeper.
local function expire_lease_at(A, deadline, now)
  redis.call('SET', A.lease, '1', 'PXAT', math.max(deadline, now + 1))
end

-- Refreshes the lease: deadline field, the sweeper's sorted set and the expiring lease key.
local function set_lease(N, A, name, rec, now, timeout_ms)
  local deadline = now + timeout_ms
  rec[F.last_heartbeat] = tostring(now)
  rec[F.deadline] = tostring(deadline)
  redis.call('ZADD', N.deadlines, deadline, name)
  expire_lease_at(A, deadline, now)
  return deadline
end

-- Appends one change to the namespace log; the stream id is the revision. The entry holds the
-- event fields (EF) and then the agent record's own fields, minus its owner, and minus its
-- Agent Card but on REGISTERED and UPDATED (up to 16 KB: not copied on every status change
-- and removal; a watcher keeps it from the earlier event). `extra` holds more
-- event fields: the previous status or record, so a watcher whose selector the agent leaves
-- still hears of it.
local function append_event(N, maxlen, ev, name, rec, reason, extra)
  local args = {'XADD', N.log, 'MAXLEN', '~', maxlen, '*', EF.type, ev, EF.agent, name}
  if reason and reason ~= '' then args[#args + 1] = EF.reason; args[#args + 1] = reason end
  for _, v in ipairs(extra or {}) do args[#args + 1] = v end
  local card = ev == EV.REGISTERED or ev == EV.UPDATED
  for k, v in pairs(rec or {}) do
    if k ~= F.owner and (card or k ~= F.agent_card) then
      args[#args + 1] = k; args[#args + 1] = v
    end
  end
  return redis.call(unpack(args))
end

local function is_live(rec, now)
  return rec[F.deadline] ~= nil and tonumber(rec[F.deadline]) > now
end

-- Registry outages (README "No mass expiry after a registry outage"). K.ACTIVE holds when the
-- registry last worked in the namespace: accepted a heartbeat or register, or swept it (the
-- sweeper visits every namespace with agents at least every half timeout). A silence longer
-- than `quiet_ms` means no registry process ran: an outage {s, e}. quiet_ms 0 = protection off.
-- Read-only, so a script can decide before its first write.
local function detect_outage(N, now, quiet_ms)
  local last = tonumber(redis.call('GET', N.active))
  if quiet_ms > 0 and last and now - last > quiet_ms then return {last, now} end
  return nil
end

local function recorded_outage(N)
  local g = redis.call('HMGET', N.gap, 's', 'e')
  if g[1] and g[2] then return {tonumber(g[1]), tonumber(g[2])} end
  return nil
end

-- Marks the registry active now; an outage just detected is recorded, once, and logged as a
-- PROGRESS event whose reason says what happened.
local function record_activity(N, maxlen, now, detected)
  redis.call('SET', N.active, now)
  if not detected then return end
  local gap = detected[2] - detected[1]
  redis.call('HSET', N.gap, 's', detected[1], 'e', detected[2])
  redis.call('XADD', N.log, 'MAXLEN', '~', maxlen, '*', EF.type, EV.PROGRESS, EF.agent, '',
    EF.reason, string.format('registry outage: no registry process worked in this namespace '
      .. 'for %.1f s; lease deadlines that fell inside it move forward by %.1f s, once',
      gap / 1000, gap / 1000))
end

-- How far to move an overdue deadline: the outage's length when the deadline fell inside it
-- and was not moved before, else 0.
local function outage_shift(rec, outage)
  if not outage or rec[F.moved] or not rec[F.deadline] then return 0 end
  local d = tonumber(rec[F.deadline])
  if d > outage[1] and d <= outage[2] then return outage[2] - outage[1] end
  return 0
end

local function move_deadline(N, A, name, rec, shift, now)
  local deadline = tonumber(rec[F.deadline]) + shift
  rec[F.deadline], rec[F.moved] = tostring(deadline), '1'
  redis.call('HSET', A.agent, F.deadline, rec[F.deadline], F.moved, '1')
  redis.call('ZADD', N.deadlines, deadline, name)
  expire_lease_at(A, deadline, now)
end

-- Removes an agent, its lease, inbox and index entries, and logs `ev`. False if it was absent.
local function remove_agent(N, A, maxlen, name, ev, reason)
  local flat = redis.call('HGETALL', A.agent)
  if #flat == 0 then
    redis.call('ZREM', N.deadlines, name)
    return false
  end
  local rec = to_map(flat)
  index_remove(N, name, rec)
  redis.call('DEL', A.agent, A.lease, A.inbox)
  if redis.call('ZCARD', N.deadlines) == 0 then
    redis.call('DEL', N.active, N.gap)  -- the last agent: no outage state stays
  end
  append_event(N, maxlen, ev, name, rec, reason)
  return true
end

-- Loads a live agent: one whose deadline is ahead, or fell inside a registry outage (`outage`,
-- default the recorded one) and was not moved before; the second result is then how far the
-- caller is to move it (0 for a plain live agent). Any other agent past its deadline is reaped
-- here (EXPIRED event); nil when absent or reaped.
local function load_live(N, A, maxlen, name, now, outage)
  local flat = redis.call('HGETALL', A.agent)
  if #flat == 0 then return nil end
  local rec = to_map(flat)
  if is_live(rec, now) then return rec, 0 end
  local shift = outage_shift(rec, outage or recorded_outage(N))
  if shift > 0 and tonumber(rec[F.deadline]) + shift > now then return rec, shift end
  remove_agent(N, A, maxlen, name, EV.EXPIRED, '')
  return nil
end

-- Filters are [[field, op, value], ...] with op "eq" (string equality), "ge" or "le" (numeric).
-- A missing field never matches.
local function matches(rec, filters)
  for _, f in ipairs(filters) do
    local have = rec[f[1]]
    if have == nil then return false end
    if f[2] == 'eq' then
      if have ~= f[3] then return false end
    else
      local x, want = tonumber(have), tonumber(f[3])
      if x == nil or (f[2] == 'ge' and x < want) or (f[2] == 'le' and x > want) then
        return false
      end
    end
  end
  return true
end

-- The record of a live agent that passes the filters, else nil.
local function load_match(P, name, now, filters)
  local flat = redis.call('HGETALL', P .. K.AGENT .. name)
  if #flat == 0 then return nil end
  local rec = to_map(flat)
  if not is_live(rec, now) or not matches(rec, filters) then return nil end
  return flat
end

-- The record of a live agent that passes the filters and has every capability key, else nil.
local function select_agent(P, name, now, filters, capability_keys)
  for _, key in ipairs(capability_keys) do
    if not redis.call('ZSCORE', key, name) then return nil end
  end
  return load_match(P, name, now, filters)
end

-- The members of `names` (a ZRANGE reply) that are in every zset of `keys`, in their order:
-- one ZMSCORE per zset over the survivors so far (C speed per member).
local function having_all(names, keys)
  local alive = names
  for _, key in ipairs(keys) do
    if #alive == 0 then break end
    local scores = redis.call('ZMSCORE', key, unpack(alive))
    local kept = {}
    for i = 1, #alive do
      if scores[i] then kept[#kept + 1] = alive[i] end
    end
    alive = kept
  end
  return alive
end

-- Candidates to fetch next for `need` more results: from the hit rate seen so far (a prior of
-- one hit in two), 25% spare; at least 16 and at most 1000 (the ZMSCORE argument count).
local function chunk_size(need, hits, examined, filtered)
  if not filtered then return math.max(need, 16) end
  local rate = (hits + 1) / (examined + 2)
  return clamp(math.ceil(need / rate * 1.25), 16, 1000)
end
