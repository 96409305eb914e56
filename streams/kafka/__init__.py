"""Kafka plumbing: broker resolution and launchers, producers, topics, broker-reset detection."""
