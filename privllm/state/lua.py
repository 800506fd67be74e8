"""
The Redis scripts of the shared admission state: each step of admission is one script, so
each check-and-set is atomic across every router (Redis runs one script at a time).

They follow privllm.state.memory step for step (same order, same limits). Every name they
touch is a keyed hash (privllm.state.hashing) under "privllm:", passed in KEYS; values are
only counters, expiry times and random lease tokens. Time is the router's clock, passed in
(milliseconds; the routers keep their clocks in sync), never Redis's.

Replay and GCRA read a value under the current and the previous epoch's names and write under
the current one. A fresh Redis (restarted: it keeps nothing on disk) has forgotten the replay
window, so the first script to run on it sets a floor, the moment it started (from its
uptime) plus the future skew: until the window has passed, a request timestamped before
the floor is refused as stale, as it could have been seen before. A Redis that ran longer
than the window before its first script sets none.

The per-address limits passed in (rate, streams, replay share) are the ask's budget: an
Oblivious HTTP relay's or a single client's (privllm.state.interface.Limits.address_budget),
at the same names.

Replies are arrays of integers: {code, retry_after, active_streams, requests in the last 10 s}
(screen) or {code, retry_after, active_streams} (commit), codes below.
"""

from __future__ import annotations

__all__ = [
    "ADDRESS_STREAMS",
    "COMMIT",
    "DEVICE_LIMITED",
    "KEY_CHECK",
    "LOAD_SECONDS",
    "OK",
    "OTHER_KEY",
    "OVERLOADED",
    "POW_SPENT",
    "RATE_LIMITED",
    "REFUSED",
    "RELEASE",
    "RENEW",
    "REPLAY",
    "REPLAY_FULL",
    "REPLAY_ROOM",
    "SCREEN",
    "SCRIPTS",
    "STALE",
    "STREAM_CAP",
]

OK = 0
RATE_LIMITED = 1  # 429 with retry_after: the address's request rate
REFUSED = 2  # the ask's own refusal, once counted
STREAM_CAP = 3  # 503: the global stream cap
POW_SPENT = 4
REPLAY = 5  # 409
STALE = 6  # 401: older than the floor of a fresh Redis
DEVICE_LIMITED = 7  # sealed, with retry_after
OVERLOADED = 8  # sealed
OTHER_KEY = 9  # 503: a router with another state key reached this Redis first
ADDRESS_STREAMS = 10  # 429, retry_after 1: the address's stream cap
REPLAY_FULL = 11  # 503: the replay window holds as many entries as it may
REPLAY_ROOM = 12  # 429 with retry_after: the address's share of the replay window is full

LOAD_SECONDS = 10

_COMMON = """
local function live(key, now)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return redis.call('ZCARD', key)
end

local function floor_of(marker, floor, now_s, skew, life)
  if redis.call('EXISTS', marker) == 0 then
    -- When this Redis started, by the router's clock (uptime is whole seconds, rounded down,
    -- so this is no earlier than the start): nothing it holds was seen before that, and a
    -- request seen by the Redis before it was timestamped at most `skew` past it. INFO is
    -- asked before the marker is written: a script error does not undo earlier writes.
    local up = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
    if not up then error('no uptime in INFO') end
    local started = now_s - up
    redis.call('SET', marker, '1')
    if started + skew + 1 > now_s - life then
      redis.call('SET', floor, started + skew + 1, 'EX', life)
    end
  end
  local f = redis.call('GET', floor)
  if f then return tonumber(f) end
  return nil
end

local function gcra(cur, prev, now, interval, tolerance)
  local tat = now
  local a = redis.call('GET', cur)
  if a then tat = math.max(tat, tonumber(a)) end
  local b = redis.call('GET', prev)
  if b then tat = math.max(tat, tonumber(b)) end
  if tat - tolerance > now then
    return math.max(1, math.ceil((tat - tolerance - now) / 1000))
  end
  local new = math.ceil(tat + interval)
  redis.call('SET', cur, string.format('%d', new), 'PX', string.format('%d', math.max(1, new - now)))
  return 0
end

local function seen(window, names, now_s)
  redis.call('ZREMRANGEBYSCORE', window, '-inf', now_s)
  for _, name in ipairs(names) do
    if redis.call('ZSCORE', window, name) then return true end
  end
  return false
end

-- nil when there is room for one more request (two entries), else the refusal's code
local function no_room(window, cur, prev, now_s, max_entries, per_address)
  if redis.call('ZCARD', window) + 2 > max_entries then return 11 end
  if live(cur, now_s) + live(prev, now_s) + 2 > per_address then return 12 end
  return nil
end

-- Expiries are relative (the router's time to the last entry's), never Redis's own clock.
local function expire_with_last(key, now, ms)
  local top = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
  if ms then
    redis.call('PEXPIRE', key, math.max(1, math.ceil(top - now)))
  else
    redis.call('EXPIRE', key, math.max(1, math.ceil(top - now)))
  end
end

-- The routers' shared hashing key: a router holding another is refused (Redis may have
-- restarted since the routers' start-up check).
local function same_key(key, value)
  local stored = redis.call('GET', key)
  if not stored then
    redis.call('SET', key, value)
    return true
  end
  return stored == value
end
"""

# KEYS: 1 replay window, 2-3 address's replay entries (current, previous epoch), 4-5 address's
# GCRA, 6 streams, 7-8 address's streams, 9 proof of work, 10 marker, 11 floor,
# 12-21 load counters (this second first, then the 9 before), 22-23 proof of work (previous
# and next epoch), 24 the key check.
# ARGV: 1 now (ms), 2 address interval (ms), 3 address tolerance (ms), 4 refused (0/1),
# 5 max streams, 6 max streams per address, 7 has proof of work (0/1), 8 its expiry (s),
# 9-10 request id names, 11-12 encapsulated key names, 13 window, 14 future skew,
# 15 max entries, 16 max entries per address, 17 the request's timestamp, 18-19 the request
# id's and encapsulated key's names in the next epoch (a router whose clock is ahead), 20 the
# key check value.
# Names are looked up in the current, previous and next epoch, and written in the current.
SCREEN = (
    _COMMON
    + """
local now = tonumber(ARGV[1])
local now_s = math.floor(now / 1000)
local window, skew = tonumber(ARGV[13]), tonumber(ARGV[14])
local life = window + skew + 1
if not same_key(KEYS[24], ARGV[20]) then return {9, 0, 0, 0} end
local floor = floor_of(KEYS[10], KEYS[11], now_s, skew, life)
local active = live(KEYS[6], now)
local function done(code, retry)
  local total = 0
  for i = 12, 21 do
    local n = redis.call('GET', KEYS[i])
    if n then total = total + tonumber(n) end
  end
  return {code, retry, active, total}
end
local wait = gcra(KEYS[4], KEYS[5], now, tonumber(ARGV[2]), tonumber(ARGV[3]))
if wait > 0 then return done(1, wait) end
redis.call('INCR', KEYS[12])
redis.call('EXPIRE', KEYS[12], 11)
if ARGV[4] == '1' then return done(2, 0) end
if active >= tonumber(ARGV[5]) then return done(3, 0) end
if live(KEYS[7], now) + live(KEYS[8], now) >= tonumber(ARGV[6]) then return done(10, 1) end
if floor and tonumber(ARGV[17]) < floor then return done(6, 0) end
if seen(KEYS[1], {ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[18], ARGV[19]}, now_s) then return done(5, 0) end
local full = no_room(KEYS[1], KEYS[2], KEYS[3], now_s, tonumber(ARGV[15]), tonumber(ARGV[16]))
if full == 12 then return done(full, life) end
if full then return done(full, 0) end
if ARGV[7] == '1' then
  if redis.call('EXISTS', KEYS[22], KEYS[23]) > 0 then return done(4, 0) end
  local left = math.max(1, tonumber(ARGV[8]) + 1 - now_s)
  if not redis.call('SET', KEYS[9], '1', 'NX', 'EX', left) then return done(4, 0) end
end
return done(0, 0)
"""
)

# KEYS: 1 replay window, 2-3 address's replay entries, 4-5 device's GCRA, 6 streams,
# 7-8 address's streams, 9-10 device's streams, 11 marker, 12 floor.
# ARGV: 1 now (ms), 2-3 request id names, 4-5 encapsulated key names, 6 timestamp, 7 window,
# 8 future skew, 9 max entries, 10 max per address, 11 device interval (ms), 12 device
# tolerance (ms), 13 max streams, 14 max streams per device, 15 max streams per address,
# 16 lease token, 17 lease expiry (ms), 18-19 the request id's and encapsulated key's names
# in the next epoch.
COMMIT = (
    _COMMON
    + """
local now = tonumber(ARGV[1])
local now_s = math.floor(now / 1000)
local window, skew = tonumber(ARGV[7]), tonumber(ARGV[8])
local life = window + skew + 1
local floor = floor_of(KEYS[11], KEYS[12], now_s, skew, life)
local timestamp = tonumber(ARGV[6])
local active = live(KEYS[6], now)
if floor and timestamp < floor then return {6, 0, active} end
if seen(KEYS[1], {ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[18], ARGV[19]}, now_s) then return {5, 0, active} end
local full = no_room(KEYS[1], KEYS[2], KEYS[3], now_s, tonumber(ARGV[9]), tonumber(ARGV[10]))
if full == 12 then return {full, life, active} end
if full then return {full, 0, active} end
local expires = timestamp + window + 1
redis.call('ZADD', KEYS[1], expires, ARGV[2], expires, ARGV[4])
redis.call('ZADD', KEYS[2], expires, ARGV[2], expires, ARGV[4])
expire_with_last(KEYS[2], now_s, false)
local wait = gcra(KEYS[4], KEYS[5], now, tonumber(ARGV[11]), tonumber(ARGV[12]))
if wait > 0 then return {7, wait, active} end
if live(KEYS[7], now) + live(KEYS[8], now) >= tonumber(ARGV[15]) then return {8, 0, active} end
if live(KEYS[9], now) + live(KEYS[10], now) >= tonumber(ARGV[14]) then return {8, 0, active} end
if active >= tonumber(ARGV[13]) then return {8, 0, active} end
local lease = tonumber(ARGV[17])
redis.call('ZADD', KEYS[6], lease, ARGV[16])
redis.call('ZADD', KEYS[7], lease, ARGV[16])
redis.call('ZADD', KEYS[9], lease, ARGV[16])
expire_with_last(KEYS[7], now, true)
expire_with_last(KEYS[9], now, true)
return {0, 0, active + 1}
"""
)

# KEYS: 1 streams, then the address and device stream sets that may hold the lease; ARGV: its token.
RELEASE = """
for _, key in ipairs(KEYS) do
  redis.call('ZREM', key, ARGV[1])
end
return 0
"""

# KEYS: 1 streams, then for each lease the address and device stream sets it is in, then
# this epoch's (a lease moves into this epoch's sets, so the caps count it under the names
# the next requests ask). ARGV: 1 now (ms), 2 the new expiry (ms), then the tokens. The
# worker's list of its streams is the truth: a lease Redis lost (it restarted, or the lease
# expired while Redis could not be reached) is put back, so the caps count it again. (A
# lease released while this call was on its way comes back until it expires: counted too
# long, never too short.)
RENEW = (
    _COMMON
    + """
local now, expires = tonumber(ARGV[1]), ARGV[2]
for i = 3, #ARGV do
  local token = ARGV[i]
  local base = 4 * (i - 3) + 1
  redis.call('ZADD', KEYS[1], expires, token)
  for j = 1, 2 do
    redis.call('ZREM', KEYS[base + j], token)
    redis.call('ZADD', KEYS[base + j + 2], expires, token)
    expire_with_last(KEYS[base + j + 2], now, true)
  end
end
return 0
"""
)

# KEYS: 1 the check; ARGV: 1 this router's check value. Replies the stored one.
KEY_CHECK = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

SCRIPTS = (SCREEN, COMMIT, RELEASE, RENEW, KEY_CHECK)
