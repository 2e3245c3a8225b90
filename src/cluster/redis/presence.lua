-- Presence and occupancy of the cluster, one atomic step per call (see presence.rs). Whatever
-- a call observes (a topic becoming occupied, a vacate that ran out, a dead node's members) it
-- returns to its caller alone: that node, and no other, emits the event.
--
-- KEYS[1] occupied topics (zset, score 0: name order)   KEYS[2] topics reported occupied (set)
-- KEYS[3] topics waiting to be vacated (zset, deadline ms)   KEYS[4] live nodes (zset, expiry ms)
-- KEYS[5] this node's counted topics (set)   KEYS[6] this node's members (set of "topic client")
-- ARGV[1] op, ARGV[2] key prefix, ARGV[3] this node, ARGV[4] vacate delay (ms), ARGV[5] how long
-- a heartbeat keeps the node live (ms, two thirds of presence.ttl). Time is Redis's own (TIME), so the nodes' clocks never have to agree.
-- Per topic T: P:{T}:n (hash node -> subscribers), P:{T}:q (hash node -> pattern-only
-- subscribers), P:{T}:p (hash client -> member JSON); a node N's sets P:node:N:t and P:node:N:m.
-- Channel P:presence carries "j|l\nnode\ntopic\nmember" for every join and leave.
local op, prefix, node = ARGV[1], ARGV[2], ARGV[3]
local delay, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local channel = prefix .. ':presence'

local function key(topic, kind)
  return prefix .. ':{' .. topic .. '}:' .. kind
end

-- After a count changed: keeps the occupied set exact and returns true when this call makes the
-- topic occupied (for the reported state; a vacate still waiting is cancelled instead).
local function settle(topic)
  local sum = 0
  for _, v in ipairs(redis.call('HVALS', key(topic, 'n'))) do
    sum = sum + tonumber(v)
  end
  if sum > 0 then
    redis.call('ZADD', KEYS[1], 0, topic)
    if redis.call('ZREM', KEYS[3], topic) == 1 then
      return false
    end
    return redis.call('SADD', KEYS[2], topic) == 1
  end
  redis.call('ZREM', KEYS[1], topic)
  if redis.call('SISMEMBER', KEYS[2], topic) == 1 and not redis.call('ZSCORE', KEYS[3], topic) then
    redis.call('ZADD', KEYS[3], now + delay, topic)
  end
  return false
end

local function count(topic, total, patterns, out)
  if total > 0 then
    redis.call('HSET', key(topic, 'n'), node, total)
    redis.call('HSET', key(topic, 'q'), node, patterns)
    redis.call('SADD', KEYS[5], topic)
  else
    redis.call('HDEL', key(topic, 'n'), node)
    redis.call('HDEL', key(topic, 'q'), node)
    redis.call('SREM', KEYS[5], topic)
  end
  if settle(topic) then
    table.insert(out, topic)
  end
end

local function join(owner, members, topic, client, json)
  if redis.call('HSET', key(topic, 'p'), client, json) == 1 then
    redis.call('SADD', members, topic .. ' ' .. client)
    redis.call('PUBLISH', channel, 'j\n' .. owner .. '\n' .. topic .. '\n' .. json)
    return true
  end
  return false
end

local function leave(owner, members, topic, client)
  local json = redis.call('HGET', key(topic, 'p'), client)
  if not json then
    return nil
  end
  redis.call('HDEL', key(topic, 'p'), client)
  redis.call('SREM', members, topic .. ' ' .. client)
  redis.call('PUBLISH', channel, 'l\n' .. owner .. '\n' .. topic .. '\n' .. json)
  return json
end

-- Everything of node `dead`: its counts, and its members, who leave; returns {topic, member}...
local function reap(dead, out)
  local topics = prefix .. ':node:' .. dead .. ':t'
  for _, topic in ipairs(redis.call('SMEMBERS', topics)) do
    redis.call('HDEL', key(topic, 'n'), dead)
    redis.call('HDEL', key(topic, 'q'), dead)
    settle(topic)
  end
  redis.call('DEL', topics)
  local members = prefix .. ':node:' .. dead .. ':m'
  for _, entry in ipairs(redis.call('SMEMBERS', members)) do
    local space = string.find(entry, ' ', 1, true)
    local topic, client = string.sub(entry, 1, space - 1), string.sub(entry, space + 1)
    local json = leave(dead, members, topic, client)
    if json then
      table.insert(out, topic)
      table.insert(out, json)
    end
  end
  redis.call('DEL', members)
end

-- ARGV[6..]: topic, subscribers, pattern-only subscribers. Returns the topics made occupied.
if op == 'counts' then
  local out = {}
  for i = 6, #ARGV, 3 do
    count(ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), out)
  end
  return out
end

-- ARGV[6..]: "j" or "l", topic, client, member JSON. Returns the 1-based indexes (in changes)
-- of the joins and leaves that changed the room: those are this node's to emit.
if op == 'members' then
  local out = {}
  local n = 0
  for i = 6, #ARGV, 4 do
    n = n + 1
    local changed
    if ARGV[i] == 'j' then
      changed = join(node, KEYS[6], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    else
      changed = leave(node, KEYS[6], ARGV[i + 1], ARGV[i + 2]) ~= nil
    end
    if changed then
      table.insert(out, n)
    end
  end
  return out
end

-- The vacates that ran out: each claimed here once, then vacated if still unsubscribed.
if op == 'vacate' then
  local out = {}
  for _, topic in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[3], topic)
    local sum = 0
    for _, v in ipairs(redis.call('HVALS', key(topic, 'n'))) do
      sum = sum + tonumber(v)
    end
    if sum == 0 and redis.call('SREM', KEYS[2], topic) == 1 then
      table.insert(out, topic)
    end
  end
  return out
end

-- Refreshes this node's expiry (now + ARGV[5]), then reaps up to 10 expired nodes. Returns
-- {1 if this node was not live (it must resync), then topic, member... of the leaves}.
if op == 'heartbeat' then
  local fresh = redis.call('ZADD', KEYS[4], now + ttl, node)
  local out = { tostring(fresh) }
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 10)) do
    redis.call('ZREM', KEYS[4], dead)
    reap(dead, out)
  end
  return out
end

-- Makes Redis hold exactly this node's state: ARGV[6] the number of count triples that
-- follow, then the triples, then (topic, client, member JSON) for every member. Returns
-- {number of occupied topics that follow, topics..., then "j"/"l", topic, member...}.
if op == 'resync' then
  local ncounts = tonumber(ARGV[6])
  local counted, wanted = {}, {}
  local occupied = {}
  for i = 7, 6 + ncounts * 3, 3 do
    counted[ARGV[i]] = true
    count(ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), occupied)
  end
  for _, topic in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    if not counted[topic] then
      count(topic, 0, 0, occupied)
    end
  end
  local changes = {}
  for i = 7 + ncounts * 3, #ARGV, 3 do
    wanted[ARGV[i] .. ' ' .. ARGV[i + 1]] = true
    if join(node, KEYS[6], ARGV[i], ARGV[i + 1], ARGV[i + 2]) then
      table.insert(changes, 'j')
      table.insert(changes, ARGV[i])
      table.insert(changes, ARGV[i + 2])
    end
  end
  for _, entry in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    if not wanted[entry] then
      local space = string.find(entry, ' ', 1, true)
      local topic = string.sub(entry, 1, space - 1)
      local json = leave(node, KEYS[6], topic, string.sub(entry, space + 1))
      if json then
        table.insert(changes, 'l')
        table.insert(changes, topic)
        table.insert(changes, json)
      end
    end
  end
  local out = { tostring(#occupied) }
  for _, t in ipairs(occupied) do
    table.insert(out, t)
  end
  for _, c in ipairs(changes) do
    table.insert(out, c)
  end
  return out
end

return redis.error_reply('unknown presence op ' .. op)
