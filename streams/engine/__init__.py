"""The table engine: consumption, event-time alignment, checkpointing and the tables it keeps in RocksDB."""
