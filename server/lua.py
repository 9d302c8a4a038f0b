"""The Lua scripts that change cluster state in Redis, each one atomic.

Every change that other nodes or clients must see in one order is a script: a publish (offset,
epoch, stream, cache, PUBLISH), a presence join or leave (membership and its member event,
sequenced in the channel like any event), a node's subscription counts (the cluster totals and
the occupied/vacated transitions they cross). A webhook event is queued by the same script
that made the change it reports, so it is queued exactly once per change however many nodes
saw it. The shared pieces are Lua functions prepended to each script.

Key names are built by `server.store.Keys`; docs/architecture.md lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .redis_link import RedisClient, RedisError, reply_str

__all__ = ["COUNTS_LUA", "JOIN_LUA", "LEAVE_LUA", "PUBLISH_LUA", "SNAPSHOT_LUA", "Script"]

# publish(): the sequenced append (Centrifugo's broker_history_add_stream.lua, in outline):
# dense per-channel offset, epoch created with the meta hash (a new epoch drops a stale
# stream), capped stream with a TTL, PUBLISH of the ready message with its position.
_PUBLISH_FN = """
local function publish(meta, stream, chan, epoch_cand, size, ttl, exclude, prefix)
  local offset = redis.call('HINCRBY', meta, 'offset', 1)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = epoch_cand
    redis.call('HSET', meta, 'epoch', epoch)
    redis.call('DEL', stream)
  end
  redis.call('EXPIRE', meta, ttl)
  if tonumber(size) > 0 then
    redis.call('XADD', stream, 'MAXLEN', size, offset .. '-0', 'm', prefix, 'x', exclude)
    redis.call('EXPIRE', stream, ttl)
  end
  local message = prefix .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
  redis.call('PUBLISH', chan, offset .. ':' .. epoch .. ':' .. exclude .. ':' .. message)
  return offset, epoch
end
"""

# The channel's position without publishing; creates the epoch (offset 0) if there is none,
# so a snapshot always names the epoch its live events will carry.
_POSITION_FN = """
local function position(meta, stream, epoch_cand, ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = epoch_cand
    redis.call('HSET', meta, 'epoch', epoch)
    redis.call('HSETNX', meta, 'offset', 0)
    redis.call('EXPIRE', meta, ttl)
    redis.call('DEL', stream)
  end
  return tonumber(redis.call('HGET', meta, 'offset') or '0'), epoch
end
"""

# webhook(): queue one event if some endpoint of the app wants its type (``types`` is
# ",kind,kind,"); the queue is capped, oldest dropped (the sender logs the drop count).
_WEBHOOK_FN = """
local function webhook(queue, types, maxlen, event)
  if queue == '' or not string.find(types, ',' .. event.name .. ',', 1, true) then
    return
  end
  redis.call('RPUSH', queue, cjson.encode(event))
  if redis.call('LLEN', queue) > tonumber(maxlen) then
    redis.call('LPOP', queue)
    redis.call('HINCRBY', queue .. ':dropped', 'n', 1)
  end
end
"""

# KEYS: meta, stream, pub/sub channel, [cache].
# ARGV: epoch candidate, history size, ttl, excluded socket id, message prefix,
#       [cache ttl (0: not a cache channel)], [webhook queue, types, max length, event JSON].
# The first five are the original layout (bench/fanout.py calls it so); the rest optional.
PUBLISH_LUA = _PUBLISH_FN + _WEBHOOK_FN + """
local offset, epoch = publish(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                              ARGV[5])
if KEYS[4] and tonumber(ARGV[6]) > 0 then
  redis.call('SET', KEYS[4], offset .. ':' .. epoch .. ':' .. ARGV[5], 'EX', ARGV[6])
end
if ARGV[7] and ARGV[7] ~= '' then
  webhook(ARGV[7], ARGV[8], ARGV[9], cjson.decode(ARGV[10]))
end
return {offset, epoch}
"""

# A subscription's snapshot of a cache channel: its position and its cached event, read
# together so the cached event is known to be at or before the position.
# KEYS: meta, stream, cache. ARGV: epoch candidate, ttl, webhook queue, types, max length,
# channel.
SNAPSHOT_LUA = _POSITION_FN + _WEBHOOK_FN + """
local offset, epoch = position(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local cached = redis.call('GET', KEYS[3])
if not cached then
  webhook(ARGV[3], ARGV[4], ARGV[5], {name = 'cache_miss', channel = ARGV[6]})
end
return {offset, epoch, cached or false}
"""

# A presence join: the connection becomes a member; the user's first connection publishes
# pusher_internal:member_added in the channel's sequence. Returns the members and the
# position they are true at, so the subscriber starts exactly there. The same script keeps
# the app's signed-in users ('#online', ``online`` = '1'): then the event is the user's
# watchlist 'online' event in its own channel (KEYS 1-3), and no snapshot is returned.
# KEYS: meta, stream, pub/sub channel (of the event), conns (conn -> user), users
#       (user -> info JSON), refs (user -> connections), node's presence set, cache.
# ARGV: conn id, user id, user info JSON, max members, epoch candidate, history size, ttl,
#       event prefix, node-set entry, webhook queue, types, max length, channel,
#       is cache ('1'/'0'), online ('1'/'0').
JOIN_LUA = _PUBLISH_FN + _POSITION_FN + _WEBHOOK_FN + """
local added = 0
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then
  if redis.call('HEXISTS', KEYS[6], ARGV[2]) == 0 and
      redis.call('HLEN', KEYS[5]) >= tonumber(ARGV[4]) then
    return {'full'}
  end
  redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
  redis.call('SADD', KEYS[7], ARGV[9])
  if redis.call('HINCRBY', KEYS[6], ARGV[2], 1) == 1 then
    redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
    publish(KEYS[1], KEYS[2], KEYS[3], ARGV[5], ARGV[6], ARGV[7], '', ARGV[8])
    webhook(ARGV[10], ARGV[11], ARGV[12],
            {name = 'member_added', channel = ARGV[13], user_id = ARGV[2]})
    added = 1
  end
end
if ARGV[15] == '1' then
  return {'ok', 0, '', {}, false, added}
end
local offset, epoch = position(KEYS[1], KEYS[2], ARGV[5], ARGV[7])
local cached = false
if ARGV[14] == '1' then
  cached = redis.call('GET', KEYS[8])
  if not cached then
    webhook(ARGV[10], ARGV[11], ARGV[12], {name = 'cache_miss', channel = ARGV[13]})
  end
end
return {'ok', offset, epoch, redis.call('HGETALL', KEYS[5]), cached or false, added}
"""

# A presence leave: the connection stops being a member; the user's last connection
# publishes pusher_internal:member_removed. Idempotent (an unknown connection changes
# nothing), so a node, its retries and every node's reaper may all send it: the event is
# published once. With ``conditional`` (the reaper) nothing happens while the connection's
# node is alive again. For '#online' (``watch`` = the key base of the users' watchlist
# channels) the event is the user's watchlist 'offline' event, in the user's channel.
# KEYS: meta, stream, pub/sub channel, conns, users, refs, node's presence set, node's alive
#       key.
# ARGV: conn id, node-set entry, conditional ('1'/'0'), epoch candidate, history size, ttl,
#       channel, webhook queue, types, max length, watch key base ('' for presence).
LEAVE_LUA = _PUBLISH_FN + _WEBHOOK_FN + """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[8]) == 1 then
  return -1
end
redis.call('SREM', KEYS[7], ARGV[2])
local user = redis.call('HGET', KEYS[4], ARGV[1])
if not user then
  return 0
end
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HINCRBY', KEYS[6], user, -1) > 0 then
  return 0
end
redis.call('HDEL', KEYS[6], user)
redis.call('HDEL', KEYS[5], user)
if ARGV[11] ~= '' then
  local chan = ARGV[11] .. user
  local events = cjson.encode({events = {{name = 'offline', user_ids = {user}}}})
  publish(chan .. ':m', chan .. ':s', chan, ARGV[4], ARGV[5], ARGV[6], '',
          '{"event":"pusher_internal:watchlist_events","data":' .. cjson.encode(events))
  return 1
end
local prefix = '{"event":"pusher_internal:member_removed","channel":' .. cjson.encode(ARGV[7]) ..
  ',"data":' .. cjson.encode(cjson.encode({user_id = user}))
publish(KEYS[1], KEYS[2], KEYS[3], ARGV[4], ARGV[5], ARGV[6], '', prefix)
webhook(ARGV[8], ARGV[9], ARGV[10], {name = 'member_removed', channel = ARGV[7], user_id = user})
return 1
"""

# One node's subscription counts for one app: its own hash is set to the given counts (mode
# 'full': channels not given are 0; 'delta': only those given; 'reap': all 0, and only while
# the node is still dead), the cluster totals move by the difference, and a total crossing
# zero queues channel_occupied / channel_vacated, any change subscription_count. Fields that
# start with a space are not channels (' connections': the app's websocket connections).
# KEYS: node's hash, totals hash, node's app set, node's alive key.
# ARGV: mode, app id, webhook queue, types, max length, then field, count pairs.
# Returns field, total pairs for the fields given (all of the node's in 'full').
COUNTS_LUA = _WEBHOOK_FN + """
if ARGV[1] == 'reap' and redis.call('EXISTS', KEYS[4]) == 1 then
  return {}
end
local given = {}
local order = {}
for i = 6, #ARGV, 2 do
  given[ARGV[i]] = tonumber(ARGV[i + 1])
  order[#order + 1] = ARGV[i]
end
if ARGV[1] ~= 'delta' then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if given[field] == nil then
      given[field] = 0
      order[#order + 1] = field
    end
  end
end
local out = {}
for _, field in ipairs(order) do
  local new = given[field]
  local old = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  local total
  if new ~= old then
    if new > 0 then
      redis.call('HSET', KEYS[1], field, new)
    else
      redis.call('HDEL', KEYS[1], field)
    end
    total = redis.call('HINCRBY', KEYS[2], field, new - old)
    if total <= 0 then
      redis.call('HDEL', KEYS[2], field)
      total = 0
    end
    if string.sub(field, 1, 1) ~= ' ' then
      local before = total - (new - old)
      if before <= 0 and total > 0 then
        webhook(ARGV[3], ARGV[4], ARGV[5], {name = 'channel_occupied', channel = field})
      elseif before > 0 and total <= 0 then
        webhook(ARGV[3], ARGV[4], ARGV[5], {name = 'channel_vacated', channel = field})
      end
      webhook(ARGV[3], ARGV[4], ARGV[5],
              {name = 'subscription_count', channel = field, subscription_count = total})
    end
  else
    total = tonumber(redis.call('HGET', KEYS[2], field) or '0')
  end
  out[#out + 1] = field
  out[#out + 1] = total
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[2])
else
  redis.call('SREM', KEYS[3], ARGV[2])
end
return out
"""


class Script:
    """A Lua script run by EVALSHA, loaded on first use and again after Redis lost it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._sha: str | None = None

    async def _load(self, client: RedisClient) -> str:
        if self._sha is None:
            self._sha = reply_str(await client.execute("SCRIPT", "LOAD", self.source)) or ""
        return self._sha

    async def run_many(self, client: RedisClient,
                       calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per (keys, args), pipelined; replies in order (errors as
        RedisError values). A NOSCRIPT reply (Redis restarted) reloads and retries once:
        EVALSHA that failed with NOSCRIPT did not run."""
        if not calls:
            return []
        for attempt in (0, 1):
            sha = await self._load(client)
            replies = await client.execute_many(
                [("EVALSHA", sha, len(keys), *keys, *args) for keys, args in calls])
            if attempt == 0 and any(isinstance(r, RedisError) and "NOSCRIPT" in str(r)
                                    for r in replies):
                self._sha = None
                continue
            return replies
        raise AssertionError("unreachable")

    async def run(self, client: RedisClient, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        (reply,) = await self.run_many(client, [(keys, args)])
        if isinstance(reply, RedisError):
            raise reply
        return reply
