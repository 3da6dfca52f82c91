--[[ heartbeat: refresh an agent's lease, store telemetry, hand out pending notifications.
KEYS[1..6] the namespace's log, deadlines, health, counts, activity and outage keys
(keys.SCRIPT_NAMESPACE_KEYS)   KEYS[7] agent hash   KEYS[8] lease   KEYS[9] inbox
Derived inside from ARGV[1] and the record (hash tag {ns}: KEYS[1]'s slot): the capability
zsets of the stored record (and its type zset when an expired agent is reaped here).
ARGV[1] namespace prefix   ARGV[2] agent name   ARGV[3] heartbeat timeout ms
ARGV[4] log max length     ARGV[5] reported status (0 = derive from telemetry)
ARGV[6] has telemetry (1/0)  ARGV[7] success_rate  ARGV[8] avg_duration_ms
ARGV[9] total_executions     ARGV[10] failed_executions
ARGV[11] success rate below which the derived status is UNHEALTHY
ARGV[12] success rate below which the derived status is DEGRADED
ARGV[13] owner required ("" = any)   ARGV[14] max notifications returned
ARGV[15] registry silence (ms) that counts as an outage, 0 = no outage protection
ARGV[16..] ids of notifications the agent acknowledges (deleted from its inbox)
Returns {status, deadline ms, notifications...}; each notification is {id, kind, payload}.
A status change appends STATUS_CHANGED; a heartbeat that changes only telemetry logs nothing.
Resending is harmless: the same telemetry is stored again and the lease moves forward.
Errors (each before any write): "INVALID_ARGUMENT" for an ack id Redis would refuse;
"NOT_FOUND" for an unknown agent or one past its deadline (reaped here, EXPIRED logged);
"PERMISSION_DENIED" when ARGV[13] is set and differs from the agent's owner.
]]
--@include agent.lua
local P, name, timeout_ms, maxlen = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local N, A = namespace_keys(P), declared_agent_keys()
for i = 16, #ARGV do
  if not valid_stream_id(ARGV[i]) then
    return redis.error_reply('INVALID_ARGUMENT ack_notification_ids: ' ..
      string.sub(ARGV[i], 1, 40) .. ' is not a notification id')
  end
end
local now = now_ms()
local outage = detect_outage(N, now, tonumber(ARGV[15]))
local old = load_live(N, A, maxlen, name, now, outage or recorded_outage(N))
if not old then return redis.error_reply('NOT_FOUND agent is not registered or has expired') end
if ARGV[13] ~= '' and old[F.owner] ~= ARGV[13] then
  return redis.error_reply('PERMISSION_DENIED agent belongs to another token')
end
record_activity(N, maxlen, now, outage)

local rec = {}
for k, v in pairs(old) do rec[k] = v end
if ARGV[6] == '1' then
  rec[F.success_rate], rec[F.avg_duration_ms] = ARGV[7], ARGV[8]
  rec[F.total_executions], rec[F.failed_executions] = ARGV[9], ARGV[10]
end
local status = tonumber(ARGV[5])
if status == 0 and ARGV[6] == '1' then
  local rate = tonumber(ARGV[7])
  if tonumber(ARGV[9]) == 0 and rate == 0 then status = HEALTHY
  elseif rate < tonumber(ARGV[11]) then status = UNHEALTHY
  elseif rate < tonumber(ARGV[12]) then status = DEGRADED
  else status = HEALTHY end
end
if status ~= 0 then rec[F.status] = tostring(status) end

local deadline = set_lease(N, A, name, rec, now, timeout_ms)
local changed = {'HSET', A.agent, F.status, rec[F.status], F.last_heartbeat, rec[F.last_heartbeat],
                 F.deadline, rec[F.deadline]}
if ARGV[6] == '1' then
  for _, f in ipairs({F.success_rate, F.avg_duration_ms, F.total_executions, F.failed_executions}) do
    changed[#changed + 1] = f; changed[#changed + 1] = rec[f]
  end
end
redis.call(unpack(changed))
if rec[F.moved] then redis.call('HDEL', A.agent, F.moved) end  -- it lives: a new lease
index_rescore(N, name, old, rec)
if old[F.status] ~= rec[F.status] then
  append_event(N, maxlen, EV.STATUS_CHANGED, name, rec, '', {EF.was, old[F.status]})
end

if #ARGV >= 16 then redis.call('XDEL', A.inbox, unpack(ARGV, 16, #ARGV)) end
local reply = {tonumber(rec[F.status]), deadline}
local pending = redis.call('XRANGE', A.inbox, '-', '+', 'COUNT', tonumber(ARGV[14]))
for _, entry in ipairs(pending) do
  local n = to_map(entry[2])
  reply[#reply + 1] = {entry[1], n[IF.kind], n[IF.payload]}
end
return reply
