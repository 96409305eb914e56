"""Helpers of the stream-table tests; the logic lives in ``streams.tools.recompute`` (shared with ``feedrank chaos``)."""

from __future__ import annotations

from streams.tools.recompute import (  # noqa: F401  (re-exported for the tests)
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


def batch_codecs(bootstrap: str, topic: str, partitions: int) -> list[tuple[str, int]]:
    """(codec, offsets it spans) of every record batch stored in ``topic``, in order.

    A raw Fetch, parsed here: no client decompresses the batches first.
    """
    import asyncio
    import struct

    from aiokafka import TopicPartition
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.fetch import FetchRequest

    async def fetch() -> list[tuple[str, int]]:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            await client.force_metadata_update()
            out: list[tuple[str, int]] = []
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
                    pos, seen = 0, len(out)
                    # baseOffset(8) length(4) epoch(4) magic(1) crc(4) attributes(2) lastOffsetDelta(4) ...
                    while pos + 27 <= len(raw):
                        base, length = struct.unpack_from(">qi", raw, pos)
                        if pos + 12 + length > len(raw):
                            break  # a partial batch at the end of the response
                        last_delta = struct.unpack_from(">i", raw, pos + 23)[0]
                        out.append((CODECS.get(struct.unpack_from(">h", raw, pos + 21)[0] & 7, "?"), last_delta + 1))
                        offset = base + last_delta + 1
                        pos += 12 + length
                    if len(out) == seen:
                        raise AssertionError(f"{topic}[{p}]@{offset}: a batch larger than the fetch (1 MiB)")
            return out
        finally:
            await client.close()

    return asyncio.run(fetch())
