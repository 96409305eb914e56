"""One frozen settings object for the whole process (env prefix ``FEEDRANK_``).

Every field is documented in the README's configuration table. The bootstrap
servers use the conventional ``KAFKA_BOOTSTRAP_SERVERS`` name as well.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Application settings; read once from the environment, never mutated."""

    model_config = SettingsConfigDict(env_prefix="FEEDRANK_", frozen=True, extra="ignore")

    bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "FEEDRANK_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers; unset = start a broker (see `broker`).",
    )
    broker: Literal["auto", "kafka", "embedded"] = Field(
        "auto",
        description="Which broker to start when no bootstrap servers are set: auto = a local Apache Kafka when Java 17+ and its jars are there, else the embedded one; kafka or embedded forces one.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="How every Kafka client connects (streams/kafka/security.py).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signs the brokers' certificates; unset = the system's.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS, with `kafka_ssl_keyfile`.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(None, description="SASL mechanism, with a SASL_* protocol.")
    kafka_sasl_username: str | None = Field(None, description="SASL user.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged); prefer `kafka_sasl_password_file`.")
    kafka_sasl_password_file: Path | None = Field(None, description="File holding the SASL password (wins over `kafka_sasl_password`).")
    app_id: str = Field("feedrank", description="Faust app id = consumer group id and changelog topic prefix.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of every user-keyed topic.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")
    min_insync_replicas: int | None = Field(None, ge=1, description="min.insync.replicas of created topics (acks=all writes need that many in-sync copies); unset = the broker's default.")
    data_dir: Path = Field(Path("var/data"), description="RocksDB state and worker files.")
    log_dir: Path = Field(Path("var/log"), description="Log files (embedded broker log).")
    web_host: str = Field("127.0.0.1", description="Worker web server bind host.")
    web_port: int = Field(6066, ge=0, le=65535, description="Worker web server port (0 = pick a free one).")
    api_token: SecretStr | None = Field(None, description="Bearer token the HTTP API asks for (`Authorization: Bearer <token>`); unset = no check. Never logged; prefer `api_token_file`.")
    api_token_file: Path | None = Field(None, description="File whose content is the API token (wins over `api_token`).")
    api_auth_routes: str = Field("score,inspection,metrics", description="Route classes that need the token once one is set: score, inspection, metrics. `/ready` never does.")
    one_record_per_batch: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Send one record per produce batch (the embedded broker's end-offset defect); auto = on for tansu.",
    )
    embedded_broker_port: int = Field(0, ge=0, le=65535, description="Port of the embedded broker (0 = free port).")
    topic_impressions: str = Field("impressions", description="Impression events topic.")
    topic_engagements: str = Field("engagements", description="Engagement events topic.")
    topic_dlq: str = Field("events-dlq", description="Dead-letter topic for events that fail to decode or validate.")
    max_event_future_s: float = Field(120.0, ge=0, description="An event whose `ts` is more than this ahead of its record's timestamp (the producer's clock at send) is dead-lettered (`ts_future`) and moves no watermark.")
    max_event_age_s: float | None = Field(None, gt=0, description="An event whose `ts` is more than this behind its record's timestamp is dead-lettered (`ts_too_old`); unset = `user_retention_s`.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field("lz4", description="Codec of the record batches a worker writes (changelog, labeled examples, feedback deltas, dead letters, prediction logs) and of the load and bench producers; consumers read every codec. lz4: ~4x less broker memory and disk for this project's JSON records at little CPU (measured on the embedded broker: 200,000 events took 50 MiB uncompressed, 12 MiB in lz4).")
    commit_interval_s: float = Field(1.0, gt=0, description="Source offset commit interval (seconds).")
    log_level: str = Field("INFO", description="Root log level.")
    # -- stream tables (issue 3) --
    topic_predictions: str = Field("predictions", description="Scorer prediction logs (key = user_id), joined into labeled examples.")
    topic_labeled: str = Field("labeled-impressions", description="One labeled example per impression when its attribution window closes.")
    topic_feedback_deltas: str = Field("feedback-deltas", description="Per-partition feedback-loop tile deltas (key = segment), read by every worker.")
    state_backend: str = Field("rocksdb://", description="State backend URL: rocksdb:// (under data_dir) or memory://.")
    rocksdb_memory_mb: int = Field(128, ge=8, le=1 << 20, description="RocksDB memory budget of a worker process (MiB), shared by all its partitions' DBs: half block cache (index and filter blocks included), half memtables.")
    sequence_len: int = Field(256, ge=1, le=4096, description="Actions kept per user in user_sequences.")
    attribution_window_s: float = Field(600.0, gt=0, description="How long an impression waits for its engagements (event time).")
    allowed_lateness_s: float = Field(60.0, ge=0, description="Event-time lateness tolerated per input partition before an event counts as late.")
    feedback_window_min: int = Field(30, ge=1, le=24 * 60, description="Feedback-loop window in one-minute tiles.")
    checkpoint_interval_s: float = Field(1.0, gt=0, description="State checkpoint (changelog + RocksDB + feedback delta shipping) interval.")
    consume_max_records: int = Field(4000, ge=1, description="Records per consumer poll of the table engine.")
    consume_partition_fetch_bytes: int = Field(262144, ge=1024, description="Max bytes fetched per partition per request (bounds how far one input runs ahead).")
    consume_fetch_max_wait_ms: int | None = Field(None, ge=1, le=10_000, description="How long the broker may hold a fetch that has no new records. Unset: 500 on Kafka (which answers as soon as a record arrives), 50 on the embedded broker (which holds a fetch for about the whole wait and answers with what arrived meanwhile, so this bounds freshness; below ~50 ms its fetches come back small and throughput drops).")
    on_broker_reset: Literal["reseed", "fail"] = Field(
        "reseed",
        description="What a worker does when the broker lost data its state depends on (the changelog ends below the local state's marker, an input ends below the stored offset: an embedded broker restarted, a topic re-created): reseed = keep the local state, re-seed the changelog from it and read re-created inputs from their start, with a WARNING and `feedrank_broker_resets_total`; fail = exit non-zero with the reason.",
    )
    shutdown_timeout_s: float = Field(5.0, gt=0, description="Bound on each wait of a graceful stop or a partition revocation (final checkpoint, consumer stop, producer flush); a wait that runs out is abandoned with a WARNING (the state stays crash-consistent and replays from its stored offsets).")
    # -- serving, calibration, routing (issues 5 and 6) --
    model_dir: Path = Field(Path("var/models"), description="Model artifacts root; serving loads `<model_dir>/latest`.")
    calibrator_dir: Path = Field(Path("var/calibrators"), description="Offline-fit calibrator sets (`feedrank replay --out`), by model version.")
    blend_config: Path | None = Field(None, description="Utility weights file (JSON/YAML), reloaded on change; unset = built-in weights.")
    topic_calibrators: str = Field("calibrators", description="Compacted topic of calibrator snapshots (key = model version), read by every worker.")
    topic_drift: str = Field("calibration-drift", description="Calibration drift records, published at a fixed event-time interval.")
    drift_interval_s: float = Field(30.0, gt=0, description="Event-time interval between calibration-drift records.")
    consistency_check: bool = Field(False, description="Run the online/offline consistency check in the worker that trains the calibrators: it replays the event topics and compares the sampled requests' served inputs with the replay's (`/metrics` feedrank_feature_mismatch_ratio, `/calibration`). Costs about as much CPU as the events' decoding again; the demo turns it on.")
    feature_log_sample: float = Field(0.01, ge=0, le=1, description="Share of score requests whose prediction log also carries the exact model inputs served (chosen by a hash of the request id), for the online/offline consistency check (`feedrank consistency`); 0 = none.")
    calibration_snapshot_s: float = Field(60.0, gt=0, description="Event-time interval between online calibrator snapshots (hot-swapped everywhere).")
    score_threads: int = Field(0, ge=0, le=64, description="Torch intra-op threads per scoring call; 0 = picked from the cores the process can use (affinity, cgroup quota): one fewer than those, 1 to 4 (`scorer.threads`). On 2 cores that is 1, measured fastest with ingestion running; two threads on two shared cores collapse (p50 1.4 -> 103 ms beside one busy core). The count in use is the `feedrank_score_threads` gauge.")
    score_process: bool = Field(True, description="Score in a process of its own beside the worker (one per worker; calibrator swaps and model reloads are passed on to it): the event loop and the score function then do not share a GIL. false: in `score_concurrency` threads of the worker process.")
    score_nice: int = Field(-5, ge=-20, le=19, description="Nice value of the score process: below the worker's 0, so a request being scored gets a core before ingestion when both want one (measured: /score p99 21.4-22.0 ms against 24.3-24.5 at 0). Below 0 needs CAP_SYS_NICE (root has it); without it the process stays at the worker's value and logs a warning.")
    score_concurrency: int = Field(1, ge=1, le=64, description="Requests scored at once (score threads) per worker, with `score_process=false`.")
    score_precision: Literal["auto", "float32", "bfloat16"] = Field("auto", description="Number format of the model's expert GEMMs when serving: bfloat16 operands with float32 accumulation (gates, towers and logits stay float32; probabilities within 0.5 % of float32 (hold-out mean AUC 0.66044 vs 0.66042), ~30 % less model time), float32, or auto = bfloat16 where the CPU has AVX512-BF16 or AMX, else float32.")
    heap_trim_interval_s: float = Field(30.0, ge=0, description="How often a worker (and its score process, between requests) gives the free pages inside glibc's heap back to the kernel (`malloc_trim`; without it RSS creeps up ~5 MiB/min under steady load while the heap's live bytes stay flat); 0 turns it off.")
    model_check_interval_s: float = Field(5.0, gt=0, description="How often a worker checks `<model_dir>/latest` for a new model to hot-swap in.")
    advertised_url: str | None = Field(None, description="URL other workers use to reach this one (default http://web_host:web_port).")
    user_retention_s: float = Field(7 * 24 * 3600.0, gt=0, description="Event-time retention of user state: actions and counter tiles older than the engagements' watermark minus this (hour-aligned) are dropped by a sweep, and a user silent that long is evicted.")

    @property
    def url(self) -> str:
        """This worker's advertised web address."""
        return self.advertised_url or f"http://{self.web_host}:{self.web_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment on first use)."""
    return Settings()
