"""The peers of ``feedrank bench peers``: one job module per engine, each run in a process of its own.

Every job reads the same pre-produced topics from the beginning and prints one line
``PEER_RESULT {json}`` (events, wall seconds and process CPU seconds from its first
event to its last) on stdout. ``quix_job`` imports nothing from feedrank: it runs in
the peers environment (``bench_peers.peers_python``), whose pins differ from ours.
"""
