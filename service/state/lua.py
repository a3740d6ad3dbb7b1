"""Every Lua script of the service, with one header style, and one NOSCRIPT-safe way to run them.

Scripts are sent as EVALSHA of their SHA-1 (computed here, no SCRIPT LOAD round trip at start). A
Redis that lost its scripts (restart, SCRIPT FLUSH, a failover to a fresh replica) answers NOSCRIPT;
such a call did nothing, so `run_pipelined` loads the scripts and runs exactly those calls again.
"""
from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from service.state.cluster import REFUSED_REPLIES, forget_topology


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())

    def queue(self, pipe: Pipeline, keys: Sequence[str], args: Sequence[Any] = ()) -> None:
        """Add one EVALSHA of this script to a pipeline (as execute_command: redis-py's cluster
        pipeline blocks its evalsha method, not the command; our keys all lie in one slot)."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


CAS = Script("cas", """
-- cmnrec cas: compare-and-set of one user's state, with the events that produced it.
-- KEYS[1] state blob   KEYS[2] model version   KEYS[3] pos   KEYS[4] recent items (list)
-- KEYS[5] recent event ids (list)
-- ARGV[1] expected pos             ('' = the user has no state)
-- ARGV[2] expected model version   ('' = none)
-- ARGV[3] expected blob check ('' = no blob): the blob's 12 header bytes 12-23 (crc32 of the payload
--         and pos, model/codec.py), compared with GETRANGE; or the SHA-1 hex (40 characters) of the
--         whole blob, which hashes all of it (for tools that do not know the layout)
-- ARGV[4] new state blob   ARGV[5] new model version   ARGV[6] new pos
-- ARGV[7] ttl seconds (0 = keys do not expire)   ARGV[8] recent-items cap   ARGV[9] event-id window
-- ARGV[10..] the applied events, oldest first, as pairs: external item id, event id ('' = none)
-- Returns {1, new pos}: committed. {0, stored pos}: somebody committed since the read, nothing
-- written. {2, event id}: that event id was committed since the read, nothing written.
local pos = redis.call('GET', KEYS[3]) or ''
local version = redis.call('GET', KEYS[2]) or ''
if pos ~= ARGV[1] or version ~= ARGV[2] then
  return {0, pos}
end
local check = ''
if #ARGV[3] == 40 then
  local blob = redis.call('GET', KEYS[1])
  if blob then
    check = redis.sha1hex(blob)
  end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  check = redis.call('GETRANGE', KEYS[1], 12, 23)
end
if check ~= ARGV[3] then
  return {0, pos}
end
for i = 11, #ARGV, 2 do
  if ARGV[i] ~= '' and redis.call('LPOS', KEYS[5], ARGV[i]) then
    return {2, ARGV[i]}
  end
end
redis.call('SET', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[6])
for i = 10, #ARGV, 2 do
  redis.call('RPUSH', KEYS[4], ARGV[i])
  if ARGV[i + 1] ~= '' then
    redis.call('RPUSH', KEYS[5], ARGV[i + 1])
  end
end
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[8]), -1)
redis.call('LTRIM', KEYS[5], -tonumber(ARGV[9]), -1)
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  for k = 1, 5 do
    redis.call('EXPIRE', KEYS[k], ttl)
  end
else
  redis.call('PERSIST', KEYS[4])
  redis.call('PERSIST', KEYS[5])
end
return {1, ARGV[6]}
""")
CAS_COMMITTED, CAS_CONFLICT, CAS_DUPLICATE = 1, 0, 2
BLOB_TOKEN = slice(12, 24)  # the header bytes ARGV[3] compares: crc32 of the payload and pos
CAS_FIXED_ARGS = 9

EVENT_IDS = Script("event_ids", """
-- cmnrec event_ids: which event ids one user's recent event-id list holds (reads only).
-- KEYS[1] recent event ids (list)
-- ARGV[1..] event ids
-- Returns one integer per ARGV, in order: 1 when the list holds that id, 0 otherwise.
local found = {}
for i = 1, #ARGV do
  if redis.call('LPOS', KEYS[1], ARGV[i]) then
    found[i] = 1
  else
    found[i] = 0
  end
end
return found
""")

LEASE_RENEW = Script("lease_renew", """
-- cmnrec lease_renew: extend a partition lease if the caller still owns it.
-- KEYS[1] lease key
-- ARGV[1] owner (consumer name)   ARGV[2] TTL in ms
-- Returns 1 if renewed, 0 if the lease is lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""")

LEASE_RELEASE = Script("lease_release", """
-- cmnrec lease_release: delete a partition lease if the caller owns it.
-- KEYS[1] lease key
-- ARGV[1] owner (consumer name)
-- Returns 1 if deleted, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
""")

SCRIPTS = (CAS, EVENT_IDS, LEASE_RENEW, LEASE_RELEASE)

Command = Callable[[Pipeline], Any]  # adds one command to a pipeline

REFUSED_RETRIES = 3  # TRYAGAIN/CLUSTERDOWN: sent again after 50, 100, 200 ms (+ jitter), then 503


class Trailer:
    """A command that must follow the others on the same connection (WAIT): `run_pipelined` sends
    it again whenever it sends any command again."""

    def __init__(self, command: Command) -> None:
        self.command = command

    def __call__(self, pipe: Pipeline) -> Any:
        return self.command(pipe)


class ScriptsLost(RuntimeError):
    """Redis answered NOSCRIPT again right after the scripts were loaded."""


async def run_pipelined(redis: Any, commands: Sequence[Command],
                        scripts: Sequence[Script] = SCRIPTS) -> list[Any]:
    """Run `commands` in one non-transactional pipeline; one reply per command, errors in place.

    Commands that Redis answered NOSCRIPT for are run once more (in one pipeline) after loading
    `scripts` (on every master of a cluster); the others are not repeated. Raises ScriptsLost if
    NOSCRIPT comes back again. In a cluster, commands refused with TRYAGAIN or CLUSTERDOWN (not
    executed) are sent again up to REFUSED_RETRIES times with a growing pause; after that their
    error stays in place. Trailers (WAIT) are sent again with any command sent again.
    """
    replies: list[Any] = [None] * len(commands)
    trailers = [i for i, command in enumerate(commands) if isinstance(command, Trailer)]
    todo = list(range(len(commands)))
    scripts_loaded = False
    refused_rounds = 0
    while True:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    commands[i](pipe)
                results = await pipe.execute(raise_on_error=False)
        except Exception as error:
            forget_topology(redis, error)
            raise
        missing, refused = [], []
        for i, result in zip(todo, results):
            replies[i] = result
            if isinstance(result, NoScriptError):
                missing.append(i)
            elif isinstance(result, REFUSED_REPLIES):
                refused.append(i)
        if missing:
            if scripts_loaded:
                raise ScriptsLost("Redis keeps forgetting the service's Lua scripts")
            for script in scripts:
                await redis.script_load(script.source)
            scripts_loaded = True
        if refused:
            forget_topology(redis, replies[refused[0]])
            if refused_rounds >= REFUSED_RETRIES:
                refused = []  # give up: the errors stay in place
            else:
                await asyncio.sleep(0.05 * 2 ** refused_rounds * random.uniform(1.0, 1.5))
                refused_rounds += 1
        again = sorted(set(missing) | set(refused))
        if not again:
            return replies
        todo = sorted(set(again) | set(trailers))
