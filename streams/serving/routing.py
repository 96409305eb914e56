"""Which worker owns which partition: a tiny directory for request routing.

Kafka Streams' interactive queries, in our shape: every worker announces the
partitions its table engine holds on a compacted one-partition topic
``<app_id>-owners`` (key = partition, value = the worker's advertised URL) and
reads the whole topic continuously, so any worker can forward a request for a
user to the worker that owns the user's partition. Announcements repeat every
few seconds, so a lost record or a stale owner heals on its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

import mode
from streams.kafka.security import kafka_options

log = logging.getLogger(__name__)


def owners_topic(app_id: str) -> str:
    return f"{app_id}-owners"


class OwnerDirectory(mode.Service):
    """Announces local partitions and keeps the latest owner of every partition."""

    def __init__(self, app_id: str, bootstrap: str, url: str, local_partitions: Callable[[], set[int]],
                 announce_every_s: float = 5.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.topic = owners_topic(app_id)
        self.bootstrap = bootstrap
        self.url = url
        self.local_partitions = local_partitions
        self.announce_every_s = announce_every_s
        self.owners: dict[int, tuple[str, int]] = {}  # partition -> (url, announced_ms)
        self._producer: Any = None
        self._consumer: Any = None

    async def on_start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, max_batch_size=1, linger_ms=0,
                                          **kafka_options("aiokafka"))
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                          **kafka_options("aiokafka"))
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_beginning(tp)
        self.add_future(self._announce_loop())
        self.add_future(self._read_loop())

    async def on_stop(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    def owner(self, partition: int) -> str | None:
        entry = self.owners.get(partition)
        return entry[0] if entry else None

    async def _announce_loop(self) -> None:
        last: set[int] = set()
        last_t = 0.0
        while not self.should_stop:
            local = set(self.local_partitions())
            now = time.monotonic()
            if local != last or now - last_t >= self.announce_every_s:
                if await self._announce(local):
                    last, last_t = local, now
            await asyncio.sleep(0.2)

    async def _announce(self, local: set[int]) -> bool:
        """Announce ``local``; False (and retried by the loop) when the broker did not take it."""
        ts = int(time.time() * 1000)
        try:
            futs = [await self._producer.send(self.topic, key=str(p).encode(),
                                              value=json.dumps({"url": self.url, "ts": ts}).encode())
                    for p in sorted(local)]
            results = await asyncio.gather(*futs, return_exceptions=True)  # every outcome retrieved
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            results = [exc]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("announcing partitions %s failed (%s: %s); retrying", sorted(local),
                        type(failed[0]).__name__, failed[0])
            await asyncio.sleep(1.0)
            return False
        return True

    async def _read_loop(self) -> None:
        while not self.should_stop:
            batch = await self._consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    try:
                        p = int(r.key.decode())
                        d = json.loads(r.value)
                        url, ts = str(d["url"]), int(d["ts"])
                    except (AttributeError, ValueError, KeyError, TypeError):
                        log.warning("ignoring malformed owner record at offset %d", r.offset)
                        continue
                    prev = self.owners.get(p)
                    if prev is None or ts >= prev[1]:
                        self.owners[p] = (url, ts)
