--[[ notify: put a message in one agent's inbox and announce it on the change log.
KEYS[1..6] the namespace's log, deadlines, health, counts, activity and outage keys
(keys.SCRIPT_NAMESPACE_KEYS; health, counts and activity only when an expired agent is reaped
here)   KEYS[7] agent hash   KEYS[8] lease   KEYS[9] inbox
Derived inside from ARGV[1] and the record (hash tag {ns}: KEYS[1]'s slot): the type and
capability zsets of an expired agent reaped here.
ARGV[1] namespace prefix   ARGV[2] agent name   ARGV[3] log max length
ARGV[4] kind   ARGV[5] payload   ARGV[6] inbox capacity
Returns the notification id. It stays in the inbox, and is handed out with every heartbeat,
until the agent acknowledges it (at-least-once; a resent call may deliver it twice).
Errors: "NOT_FOUND" for an unknown or expired agent; "RESOURCE_EXHAUSTED" when the inbox holds
ARGV[6] unacknowledged messages.
]]
--@include agent.lua
local P, name, maxlen = ARGV[1], ARGV[2], ARGV[3]
local N, A = namespace_keys(P), declared_agent_keys()
local now = now_ms()
local rec, shift = load_live(N, A, maxlen, name, now)
if not rec then return redis.error_reply('NOT_FOUND agent is not registered or has expired') end
if redis.call('XLEN', A.inbox) >= tonumber(ARGV[6]) then
  return redis.error_reply('RESOURCE_EXHAUSTED inbox is full: the agent has not acknowledged ' ..
    ARGV[6] .. ' notifications')
end
if shift > 0 then move_deadline(N, A, name, rec, shift, now) end
local id = redis.call('XADD', A.inbox, '*', IF.kind, ARGV[4], IF.payload, ARGV[5])
redis.call('XADD', N.log, 'MAXLEN', '~', maxlen, '*', EF.type, EV.NOTIFICATION, EF.agent, name,
  EF.notification, id, EF.kind, ARGV[4], EF.payload, ARGV[5])
return id
