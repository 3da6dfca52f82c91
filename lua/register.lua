--[[ register: create or replace an agent and index it.
KEYS[1..6] the namespace's log, deadlines, health, counts, activity and outage keys
(keys.SCRIPT_NAMESPACE_KEYS)   KEYS[7] agent hash   KEYS[8] lease   KEYS[9] inbox (reaping an
expired agent of the same name empties it)
Derived inside from ARGV[1] and the records (hash tag {ns}: KEYS[1]'s slot): the type and
capability zsets of the old and the new record.
ARGV[1] namespace prefix   ARGV[2] agent name   ARGV[3] heartbeat timeout ms
ARGV[4] log max length     ARGV[5] agent type   ARGV[6] status   ARGV[7] capabilities, comma-joined, sorted
ARGV[8] endpoint     ARGV[9] cluster  ARGV[10] version
ARGV[11] owner: the agent token that registers it; "" = any owner (an operator token, or
authentication off), as in heartbeat.lua and deregister.lua: a live agent then keeps its owner
ARGV[12] registry silence (ms) that counts as an outage, 0 = no outage protection
ARGV[13..] metadata key, value pairs; the key "@card" (never a metadata key) carries the
A2A Agent Card JSON, stored whole in one field
Returns {outcome, record as flat field/value list, first}; outcome is "registered", "updated"
or "unchanged" (a resend of the same request: only the lease is refreshed, nothing is logged);
first is 1 when the namespace had no agent before this one, or this lease ends before every
other lease of the namespace (another process with a shorter timeout): the server then writes
the keys outside the namespace's slot, the namespace set and the sweeper's schedule; else 0.
An expired agent under the same name is reaped first (EXPIRED, then REGISTERED).
The server picks a random 64-bit name for new agents, so a resend after a timeout finds its
own first attempt and answers "unchanged".
Errors: "PERMISSION_DENIED" when ARGV[11] is set and a live agent of that name belongs to
another owner.
]]
--@include agent.lua
local P, name, timeout_ms, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local N, A = namespace_keys(P), declared_agent_keys()
local now = now_ms()

-- Empty text and telemetry before the first heartbeat are left out: a smaller hash.
local rec = {[F.agent_type] = ARGV[5], [F.status] = ARGV[6], [F.registered_at] = tostring(now)}
local optional = {[F.capabilities] = ARGV[7], [F.endpoint] = ARGV[8], [F.cluster] = ARGV[9],
                  [F.version] = ARGV[10], [F.owner] = ARGV[11]}
for k, v in pairs(optional) do if v ~= '' then rec[k] = v end end
for i = 13, #ARGV, 2 do
  if ARGV[i] == '@card' then rec[F.agent_card] = ARGV[i + 1]
  else rec[K.METADATA .. ARGV[i]] = ARGV[i + 1] end
end

-- Fields a re-register may change; telemetry and times are not part of the comparison.
local function same_identity(a, b)
  for k, v in pairs(a) do
    local timing = k == F.registered_at or k == F.last_heartbeat or k == F.deadline
                   or k == F.moved
    local telemetry = k == F.success_rate or k == F.avg_duration_ms or k == F.total_executions
                      or k == F.failed_executions
    if not timing and not telemetry and b[k] ~= v then return false end
  end
  return true
end

local outage = detect_outage(N, now, tonumber(ARGV[12]))
local old = load_live(N, A, maxlen, name, now, outage or recorded_outage(N))

if old and ARGV[11] ~= '' and (old[F.owner] or '') ~= ARGV[11] then
  return redis.error_reply('PERMISSION_DENIED agent belongs to another token')
end
if old and ARGV[11] == '' then rec[F.owner] = old[F.owner] end
record_activity(N, maxlen, now, outage)

local key = A.agent
if old and same_identity(rec, old) and same_identity(old, rec) then
  set_lease(N, A, name, old, now, timeout_ms)
  redis.call('HSET', key, F.last_heartbeat, old[F.last_heartbeat], F.deadline, old[F.deadline])
  if old[F.moved] then redis.call('HDEL', key, F.moved) end
  return {'unchanged', to_flat(old), 0}
end

local ev, extra = EV.REGISTERED, nil
if old then
  local was = {}  -- without its card: watchers need the old capabilities, not the card
  for k, v in pairs(old) do
    if k ~= F.agent_card then was[#was + 1] = k; was[#was + 1] = v end
  end
  extra = {EF.old, cjson.encode(was)}
  ev = EV.UPDATED
  rec[F.registered_at] = old[F.registered_at]
  index_remove(N, name, old)
  redis.call('DEL', key)
end
local earliest = redis.call('ZRANGE', N.deadlines, 0, 0, 'WITHSCORES')
local first = #earliest == 0 or tonumber(earliest[2]) > now + timeout_ms
set_lease(N, A, name, rec, now, timeout_ms)
redis.call('HSET', key, unpack(to_flat(rec)))
index_add(N, name, rec)
append_event(N, maxlen, ev, name, rec, '', extra)
return {ev == EV.REGISTERED and 'registered' or 'updated', to_flat(rec), first and 1 or 0}
