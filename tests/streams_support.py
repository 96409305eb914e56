"""Helpers of the stream-table tests; the logic lives in ``streams.recompute`` (shared with ``feedrank chaos``)."""

from __future__ import annotations

from streams.recompute import (  # noqa: F401  (re-exported for the tests)
    META_KEY,
    T0,
    dump_state,
    dump_worker_state,
    encode_event,
    labeled_examples,
    labeled_records,
    partition_for,
    produce,
    read_inputs,
    read_topic,
    recompute,
    scenario,
    table_settings,
)


#: record-batch codecs by the low 3 bits of a v2 batch's attributes
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def batch_codecs(bootstrap: str, topic: str, partitions: int) -> list[str]:
    """The codec of every record batch stored in ``topic`` (a raw Fetch: no client decodes them first)."""
    import asyncio
    import struct

    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest

    async def fetch() -> list[str]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            await client.force_metadata_update()
            out: list[str] = []
            for p in range(partitions):
                offset = 0
                while True:
                    node = client.cluster.leader_for_partition(TopicPartition(topic, p))
                    req = FetchRequest(100, 1, 1 << 20, 0, [(topic, [(p, offset, 1 << 20)])])
                    resp = await client.send(node, req)
                    raw = next((f for f in reversed(resp.topics[0][1][0]) if isinstance(f, (bytes, bytearray, memoryview))), b"")
                    raw = bytes(raw)
                    if not raw:
                        break
                    pos = 0
                    while pos + 23 <= len(raw):  # baseOffset(8) length(4) epoch(4) magic(1) crc(4) attributes(2)
                        base, length = struct.unpack_from(">qi", raw, pos)
                        if pos + 12 + length > len(raw):
                            break  # a partial batch at the end of the response
                        out.append(CODECS.get(struct.unpack_from(">h", raw, pos + 21)[0] & 7, "?"))
                        last_delta = struct.unpack_from(">i", raw, pos + 23 + 4)[0]  # after attributes: lastOffsetDelta
                        offset = base + last_delta + 1
                        pos += 12 + length
            return out
        finally:
            await client.close()

    return asyncio.run(fetch())
