--[[ deregister: remove an agent and every index entry (also used for eviction).
KEYS[1..6] the namespace's log, deadlines, health, counts, activity and outage keys
(keys.SCRIPT_NAMESPACE_KEYS)   KEYS[7] agent hash   KEYS[8] lease   KEYS[9] inbox
Derived inside from ARGV[1] and the stored record (hash tag {ns}: KEYS[1]'s slot): its type
and capability zsets.
ARGV[1] namespace prefix   ARGV[2] agent name   ARGV[3] log max length
ARGV[4] event: "deregistered" or "evicted"   ARGV[5] reason (logged with evictions)
ARGV[6] owner required ("" = any)
Returns 1 when a live agent was removed (2 when it was the namespace's last: the server then
forgets the namespace), 0 when it was already gone (not an error, so a resend
is harmless; an agent found past its deadline is logged as EXPIRED and also returns 0).
Errors: "PERMISSION_DENIED" when ARGV[6] is set and differs from the agent's owner.
]]
--@include agent.lua
local P, name, maxlen = ARGV[1], ARGV[2], ARGV[3]
local N, A = namespace_keys(P), declared_agent_keys()
local rec = load_live(N, A, maxlen, name, now_ms())
if not rec then return 0 end
if ARGV[6] ~= '' and rec[F.owner] ~= ARGV[6] then
  return redis.error_reply('PERMISSION_DENIED agent belongs to another token')
end
local ev = ARGV[4] == 'evicted' and EV.EVICTED or EV.DEREGISTERED
remove_agent(N, A, maxlen, name, ev, ARGV[5])
if redis.call('ZCARD', N.deadlines) == 0 then return 2 end
return 1
