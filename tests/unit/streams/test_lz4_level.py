"""Our aiokafka producers compress lz4 at ``LZ4_LEVEL``, not aiokafka's hard-coded LZ4-HC 9, and the batches read back."""

from __future__ import annotations

import importlib

import orjson

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from streams.kafka.producer import LZ4_LEVEL, compression_type
from streams.settings import Settings


def test_lz4_batches_are_compressed_at_our_level_and_read_back() -> None:
    assert compression_type(Settings(compression="lz4")) == "lz4"
    for name in ("aiokafka.record._crecords.default_records", "aiokafka.record.default_records"):
        encode = importlib.import_module(name).lz4_encode  # what the (Cython or Python) builder calls
        assert getattr(encode, "keywords", {}).get("level") == LZ4_LEVEL, name
    values = [orjson.dumps({"example_id": f"m{i}", "user_id": f"u{i % 7}", "surface": "home", "ts": i})
              for i in range(500)]
    b = DefaultRecordBatchBuilder(magic=2, compression_type=3, is_transactional=0, producer_id=-1,
                                  producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i, v in enumerate(values):
        b.append(i, timestamp=None, key=b"k", value=v, headers=[])
    data = bytes(b.build())
    assert len(data) < sum(map(len, values)) / 3  # compressed
    assert [r.value for r in MemoryRecords(data).next_batch()] == values
