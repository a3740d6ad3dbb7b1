"""One batch of stream entries: validate, dead-letter the poison, apply the rest, acknowledge.

A poison entry (malformed fields, unknown item, a user who belongs to another partition than the
stream it was read from, a user whose stored keys have the wrong Redis type) goes to the
partition's dead-letter stream with the reason and its original fields and is acknowledged in the
same transaction. The valid entries go
through `StateStore.apply_batch`, the same code path (and the same batched engine) as the HTTP API:
one user's events in stream order, different users stepped together. Only when their states are
committed are the entries XACKed: a crash in between leaves them pending, and whoever reclaims them
applies them again, which the store recognises by their event ids (at most once).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.ops import metrics
from service.ops.labels import DeadLetterReason
from service.state.domain import Event, InvalidEvent, UserStateCorrupt
from service.state.keys import KeySchema
from service.state.store import StateStore
from service.streams.partitions import Entry
from service.streams.records import parse_entry, partition_of

log = logging.getLogger(__name__)

Poison = tuple[Entry, DeadLetterReason, str, str]  # entry, reason, field, message


@dataclass
class BatchReport:
    """What one batch did (for logs, tests and the benchmark)."""

    entries: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0


class BatchApplier:
    """Applies batches of entries of one consumer group to `store`."""

    def __init__(self, client: aioredis.Redis, store: StateStore, keys: KeySchema, *, group: str,
                 consumer: str, max_id_length: int, dead_letter_maxlen: int,
                 partitions: int | None = None) -> None:
        self.client = client
        self.store = store
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.max_id_length = max_id_length
        self.dead_letter_maxlen = dead_letter_maxlen
        self.partitions = partitions  # P, to check each entry's partition (None: no check)

    @property
    def vocab(self):  # noqa: ANN201 - the served model's vocabulary
        return self.store.engine.vocab

    def validate(self, entries: list[Entry]) -> tuple[list[tuple[Entry, Event]], list[Poison]]:
        """Split entries into applicable events and poison (with the reason)."""
        valid: list[tuple[Entry, Event]] = []
        poison: list[Poison] = []
        for entry in entries:
            try:
                event = parse_entry(entry.fields, self.max_id_length)
            except InvalidEvent as error:
                poison.append((entry, DeadLetterReason.MALFORMED, error.field, error.message))
                continue
            if self.partitions is not None and (
                    partition_of(event.user_id, self.partitions) != entry.partition):
                poison.append((entry, DeadLetterReason.WRONG_PARTITION, "user_id",
                               f"user {event.user_id!r} belongs to partition"
                               f" {partition_of(event.user_id, self.partitions)}, not"
                               f" {entry.partition} (publisher with another partition count?)"))
                continue
            if event.item_id not in self.vocab:
                poison.append((entry, DeadLetterReason.UNKNOWN_ITEM, "item_id",
                               f"unknown item {event.item_id!r}"))
                continue
            valid.append((entry, event))
        return valid, poison

    async def apply(self, entries: list[Entry]) -> BatchReport:
        """Dead-letter the poison, apply and commit the rest, then acknowledge. Raises what the
        store or Redis raised; the entries not acknowledged then stay pending."""
        report = BatchReport(entries=len(entries))
        valid, poison = self.validate(entries)
        if poison:
            await self.dead_letter(poison)
            report.dead_lettered = len(poison)
        while valid:
            try:
                results = await self.store.apply_batch([event for _, event in valid])
            except UserStateCorrupt as error:
                # Nothing was committed for these users (their read or commit failed): dead-letter
                # their entries and apply the others; users committed before stay committed and
                # their entries are recognised by event id when applied again.
                corrupt = set(error.user_ids)
                bad = [(entry, DeadLetterReason.STATE_CORRUPT, "user_id", str(error))
                       for entry, event in valid if event.user_id in corrupt]
                await self.dead_letter(bad)
                report.dead_lettered += len(bad)
                valid = [(entry, event) for entry, event in valid if event.user_id not in corrupt]
                continue
            report.applied = sum(1 for r in results if r.applied)
            report.duplicates = len(results) - report.applied
            await self.acknowledge([entry for entry, _ in valid])
            break
        return report

    async def dead_letter(self, poison: list[Poison]) -> None:
        """Per partition, one MULTI: XADD each entry to the dead-letter stream, XACK them."""
        by_partition: dict[int, list[Poison]] = defaultdict(list)
        for item in poison:
            by_partition[item[0].partition].append(item)
        for partition, items in by_partition.items():
            async with self.client.pipeline(transaction=True) as pipe:
                for entry, reason, field_name, message in items:
                    record: dict[Any, Any] = dict(entry.fields)
                    record.update({"dead.reason": reason.value, "dead.field": field_name,
                                   "dead.message": message,
                                   "dead.stream": self.keys.stream(partition),
                                   "dead.id": entry.entry_id, "dead.consumer": self.consumer})
                    pipe.xadd(self.keys.dead_letter(partition), record,
                              maxlen=self.dead_letter_maxlen, approximate=True)
                pipe.xack(self.keys.stream(partition), self.group,
                          *[entry.entry_id for entry, *_ in items])
                await pipe.execute()
            for _, reason, _, _ in items:
                metrics.WORKER_DEAD_LETTERS_TOTAL.labels(reason.value).inc()
        log.info("worker %s: dead-lettered %d entries", self.consumer, len(poison))

    async def acknowledge(self, entries: list[Entry]) -> None:
        by_partition: dict[int, list[str]] = defaultdict(list)
        for entry in entries:
            by_partition[entry.partition].append(entry.entry_id)
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, ids in by_partition.items():
                pipe.xack(self.keys.stream(partition), self.group, *ids)
            await pipe.execute()
