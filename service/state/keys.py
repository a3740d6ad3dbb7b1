"""Every Redis key of the service, built in one place.

A user's keys carry the user id in a hash tag, `PREFIX:{<user>}:state`, so that Redis Cluster puts
all of one user's keys in one slot and the compare-and-set script may touch them together. A stream
partition's keys (stream, dead letters, lease) share the tag `{p}` the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class UserKeys(NamedTuple):
    """The five keys of one user, in the order the compare-and-set script takes them as KEYS."""

    state: str  # string: the state blob (model/codec.py layout)
    version: str  # string: the model version that made the blob
    pos: str  # string: events absorbed by the blob (decimal)
    recent: str  # list: the user's most recent external item ids, oldest first, capped
    events: str  # list: the user's most recent event ids, oldest first, capped


@dataclass(frozen=True)
class KeySchema:
    """Key builder for one prefix (tests use their own prefix and delete their keys)."""

    prefix: str = "cmnrec"

    def user(self, user_id: str) -> UserKeys:
        base = f"{self.prefix}:{{{user_id}}}"
        return UserKeys(state=f"{base}:state", version=f"{base}:version", pos=f"{base}:pos",
                        recent=f"{base}:recent", events=f"{base}:events")

    def stream(self, partition: int) -> str:
        """The event stream of one partition."""
        return f"{self.prefix}:events:{{{partition}}}"

    def dead_letter(self, partition: int) -> str:
        """The dead-letter stream of one partition."""
        return f"{self.prefix}:events:{{{partition}}}:dead"

    def lease(self, partition: int) -> str:
        """The lease (string: owner consumer name, with a TTL) of one partition."""
        return f"{self.prefix}:events:{{{partition}}}:owner"

    def workers(self) -> str:
        """Sorted set of live worker names, scored by their last heartbeat (ms since the epoch)."""
        return f"{self.prefix}:workers"
