-- Gives a topic a new epoch, if it still has the one a node saw diverge from what it delivered
-- (writes lost by a failover to a replica that had not received them): every node and client
-- then resets explicitly instead of taking the reissued seqs for ones it already has.
-- KEYS[1]: the topic's meta hash. ARGV[1]: the epoch seen, ARGV[2]: the new epoch.
-- Returns 1 when it changed the epoch, 0 when another node (or a restart) already did.
if redis.call('HGET', KEYS[1], 'e') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'e', ARGV[2])
  return 1
end
return 0
