local n = (#ARGV - 8) / 3
local idem, set, digest = KEYS[2 * n + 1], KEYS[2 * n + 2], ARGV[4]
if digest ~= '' then
  local prior = redis.call('HMGET', idem, 'h', 's')
  if prior[1] then
    if prior[1] ~= digest then
      return {2}
    end
    local out = {1}
    for seq in string.gmatch(prior[2], '%d+') do
      out[#out + 1] = tonumber(seq)
    end
    return out
  end
end
if set then
  local fresh, seen = 0, {}
  for i = 0, n - 1 do
    local topic = ARGV[9 + 3 * i]
    if not seen[topic] and redis.call('SISMEMBER', set, topic) == 0 then
      fresh = fresh + 1
    end
    seen[topic] = true
  end
  if fresh > 0 and redis.call('SCARD', set) + fresh > tonumber(ARGV[6]) then
    return redis.error_reply('TOOMANYTOPICS the topic limit is reached')
  end
end
local out, created = {0}, {}
for i = 0, n - 1 do
  local meta, stream = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local topic, data, size = ARGV[9 + 3 * i], ARGV[10 + 3 * i], tonumber(ARGV[11 + 3 * i])
  local epoch = redis.call('HGET', meta, 'e')
  created[i + 1] = 0
  if not epoch then
    epoch = ARGV[1]
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch)
    created[i + 1] = 1
    if set then
      redis.call('SADD', set, topic)
    end
  end
  local seq = redis.call('HINCRBY', meta, 's', 1)
  redis.call('HSET', meta, 't', ARGV[2], 'd', data)
  if size > 0 then
    redis.call('XADD', stream, 'MAXLEN', size, seq .. '-0', 't', ARGV[2], 'd', data)
  else
    redis.call('DEL', stream)
  end
  redis.call(ARGV[7], ARGV[3] .. topic .. ARGV[8], epoch .. ' ' .. seq .. ' ' .. ARGV[2] .. ' ' .. data)
  out[#out + 1] = string.format('%d', seq)
end
if digest ~= '' then
  redis.call('HSET', idem, 'h', digest, 's', table.concat(out, ' ', 2))
  redis.call('PEXPIRE', idem, ARGV[5])
end
for i = 2, #out do
  out[i] = tonumber(out[i])
end
for i = 1, n do
  out[#out + 1] = created[i]
end
return out
