"""The commit protocol: checkpoints of a partition's tables, its outputs and its offsets.

Every ``checkpoint_interval_s`` a snapshot of the partition's changed keys is
handed to a background task that awaits the outputs (labeled examples, dead
letters), writes each changed key once plus a marker to the changelog, commits
the same changes and the source offsets in one RocksDB batch, then ships the
feedback delta (outbox) and commits the consumer offsets (informational: the
offsets stored with the state are the truth). One checkpoint in flight per
partition. A mixin of ``TableEngine``: it reads ``self.tables``,
``self.producer``, ``self.consumer`` and ``self._ckpt_tasks``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable, TypeVar

import orjson


from streams.engine.ingest import DeadLetter
from streams.engine.state.exceptions import BrokerResetError, ChangelogError, ChangelogResetError
from streams.engine.state.recovery import RESEED_PENDING, TOPIC_IDS, send_records, write_checkpoint
from streams.engine.tables import PartitionTables

log = logging.getLogger(__name__)


#: the informational consumer offset commit of a checkpoint gives up after this long
COMMIT_TIMEOUT_S = 5.0


#: a changelog write that fails (not a reset) is retried this long before the checkpoint fails; retrying is
#: safe (an unfinished attempt is a tail without marker). After an embedded broker restart, records written
#: while a topic did not exist yet become part of it once it is created, and the next writes collide with
#: them (UnknownError) until its offsets pass them
CHANGELOG_RETRY_S = 30.0


_T = TypeVar("_T")


class CheckpointMixin:
    """The checkpointing part of ``streams.engine.engine.TableEngine``."""

    def _emitter(self, p: int) -> Callable[[str, dict[str, Any]], None]:
        buf = self._emitted.setdefault(p, [])

        def emit(user_id: str, example: dict[str, Any]) -> None:
            buf.append((user_id, example))

        return emit

    async def _dead_letter(self, dl: DeadLetter) -> None:
        self.dead_lettered += 1
        log.warning("dead-lettered %s[%d]@%d: %s", dl.topic, dl.partition, dl.offset, dl.reason)
        fut = await self.producer.send(self.settings.topic_dlq, key=dl.key, value=dl.value,
                                       headers=dl.headers(), partition=dl.partition)
        self._outputs.setdefault(dl.partition, []).append(fut)

    async def _send_emitted(self) -> None:
        topic = self.settings.topic_labeled
        dumps = orjson.dumps
        for p, buf in self._emitted.items():
            if not buf:
                continue
            records = [(user_id.encode(), dumps(ex), [("feedrank.example_id", ex["example_id"].encode())])
                       for user_id, ex in buf]
            buf.clear()
            self._outputs.setdefault(p, []).extend(await send_records(self.producer, topic, p, records))

    # -- checkpoints ---------------------------------------------------------------
    async def _checkpoint_all(self, wait: bool = False) -> None:
        """Start a checkpoint of every partition with none in flight (``wait``: all, and await them)."""
        self._last_ckpt = time.monotonic()
        for p in list(self.tables):
            if wait:
                await self._wait_checkpoint(p)
            await self._checkpoint(p, wait=wait)

    async def _wait_checkpoint(self, p: int) -> None:
        task = self._ckpt_tasks.get(p)
        if task is not None:
            try:
                await asyncio.shield(task)
            finally:
                if task.done() and self._ckpt_tasks.get(p) is task:  # a cancelled waiter leaves it registered
                    self._ckpt_tasks.pop(p, None)

    async def _checkpoint(self, p: int, wait: bool = False) -> None:
        task = self._ckpt_tasks.get(p)
        if task is not None:
            if not task.done():
                return  # one in flight per partition; the next interval takes the rest
            self._ckpt_tasks.pop(p)
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        tables = self.tables[p]
        outs = self._outputs.pop(p, [])
        if not tables.dirty:
            if outs:
                await asyncio.gather(*outs)
            return
        snap, meta = tables.prepare()
        ids = self._part_ids.get(p)
        if ids:
            meta.extra[TOPIC_IDS] = dict(ids)  # the topics this checkpoint's offsets and marker refer to
        coro = self._write_checkpoint(p, tables, snap, meta, outs)
        if wait:
            await coro
            return
        task = asyncio.ensure_future(coro)
        task.add_done_callback(self._checkpoint_done)
        self._ckpt_tasks[p] = task

    def _checkpoint_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._ckpt_error is None:
            self._ckpt_error = task.exception()
            log.error("checkpoint failed: %s", self._ckpt_error)

    async def _write_checkpoint(self, p: int, tables: PartitionTables, snap: Any, meta: Any,
                                outs: list[asyncio.Future[Any]]) -> None:
        from aiokafka import TopicPartition

        if outs:
            await asyncio.gather(*outs)  # labeled examples / dead letters of the interval are acknowledged
        while not snap.serialize(2000):  # in chunks: fresh events are processed in between
            await asyncio.sleep(0)
        changes = snap.changes

        async def write() -> bool:
            """Write the delta; True when the broker lost the changelog (raises under on_broker_reset=fail)."""
            try:
                meta.changelog_offset = await write_checkpoint(self.producer, self._changelog, p, changes, meta,
                                                               after=tables.state.meta.changelog_offset)
                return False
            except ChangelogResetError as exc:
                self._broker_reset("changelog", p, str(exc))
                meta.changelog_offset = exc.marker
                return True

        reset = await self._retrying(f"partition {p}: changelog write of the checkpoint", write, ChangelogError)
        if self.tables.get(p) is not tables:
            return  # revoked meanwhile (the revocation awaited us; nothing else to do)
        if reset:
            # the delta is valid: commit it flagged, then write the whole state after it
            tables.committed(changes, replace(meta, extra={**meta.extra, RESEED_PENDING: True}))
            self._ids.update(await self._topic_ids_patiently([self._changelog]))
            await self._reseed(p, tables.state)
        else:
            tables.committed(changes, meta)
        self.checkpoints += 1
        await self._ship_outbox(meta.outbox)
        try:
            await asyncio.wait_for(
                self.consumer.commit({TopicPartition(t, p): o + 1 for t, o in meta.offsets.items()}), COMMIT_TIMEOUT_S)
        except Exception as exc:  # informational commit; the state's offsets are the truth
            log.debug("consumer offset commit for partition %d skipped: %s", p, exc)

    async def _ship_outbox(self, outbox: dict[str, Any]) -> None:
        """Send a checkpoint's feedback delta; failures are retried (the view dedups by origin and ckpt)."""
        if outbox:
            await self._retrying(f"shipping the feedback delta of checkpoint {outbox.get('ckpt')}",
                                 lambda: self._send_outbox(outbox), Exception)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[_T]],
                        retry_on: type[BaseException] | tuple[type[BaseException], ...]) -> _T:
        """``await op()``, retried every 0.5 s for ``CHANGELOG_RETRY_S`` on ``retry_on`` (not after stop).

        Safe for what it wraps: an unfinished changelog attempt is a tail
        without marker, feedback deltas are deduplicated by origin and checkpoint,
        and a recovery attempt writes a new fence and resumes from its last commit.
        """
        deadline = time.monotonic() + CHANGELOG_RETRY_S
        while True:
            try:
                return await op()
            except retry_on as exc:
                if time.monotonic() > deadline or self.should_stop:
                    raise
                log.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
                await asyncio.sleep(0.5)

    async def _send_outbox(self, outbox: dict[str, Any]) -> None:
        origin, ckpt = int(outbox["origin"]), int(outbox["ckpt"])
        topic = self.settings.topic_feedback_deltas
        futs = []
        for seg, tiles in outbox["delta"].items():
            value = json.dumps({"origin": origin, "ckpt": ckpt, "segment": seg, "tiles": tiles},
                               separators=(",", ":")).encode()
            futs.append(await self.producer.send(topic, key=seg.encode(), value=value))
        for r in await asyncio.gather(*futs, return_exceptions=True):  # every outcome retrieved
            if isinstance(r, BaseException):
                raise r

    async def _checkpoint_before_close(self, p: int) -> None:
        from streams.metrics import STOP_ABANDONED

        timeout = self.settings.shutdown_timeout_s
        in_flight = self._ckpt_tasks.get(p)

        async def final() -> None:
            await self._wait_checkpoint(p)
            await self._checkpoint(p, wait=True)

        try:
            await asyncio.wait_for(final(), timeout)
        except asyncio.TimeoutError:
            STOP_ABANDONED.labels("revoke_checkpoint").inc()
            log.warning("partition %d: checkpoint at revocation abandoned after %.1fs (broker unreachable?); the "
                        "next owner replays the inputs after the last committed checkpoint", p, timeout)
        except BrokerResetError:
            raise
        except Exception as exc:
            log.error("partition %d: checkpoint at revocation failed (%s: %s); the next owner replays the inputs "
                      "after the last committed checkpoint", p, type(exc).__name__, exc)
        finally:
            for task in (in_flight, self._ckpt_tasks.pop(p, None)):
                if task is not None and not task.done():
                    task.cancel()
