"""One Settings object, read from LPIPS_GATE_* variables and passed down; nothing is built at import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from platformdirs import user_cache_path, user_data_path
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gate.vocabulary import Device, Net, Precision


def _split_urls(text: str) -> list[str]:
    return [url.strip() for url in text.split(",") if url.strip()]


def _default_database_url() -> str:
    folder = user_data_path("lpips-gate")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'lpips-gate.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LPIPS_GATE_", extra="ignore")

    # URLs may hold credentials: repr=False keeps them out of a printed Settings (and its errors)
    database_url: str = Field(default_factory=_default_database_url, repr=False)
    database_password: SecretStr | None = None  # replaces database_url's password (URL in a ConfigMap, it in a Secret)
    broker_url: str | None = Field(default=None, repr=False)  # None: run the work in-process (the embedded default)
    queue_name: str | None = None  # None: lpips.<store key>; a fixed name for KEDA, bound to one store on Redis
    celery_events: bool = False  # workers send task events (Flower, `celery events`)
    weights_dir: Path = Field(default_factory=lambda: user_cache_path("lpips-gate") / "weights")
    image_root: Path = Field(default_factory=Path.cwd)  # the only folder task paths may point into

    net: Net = "alex"
    version: str = "0.1"
    fallback_net: Net | None = "vgg"  # differs from `net`: the same backbone again is no fallback
    device: Device = "auto"
    precision: Precision = "fp32"

    max_pixels: int = 64_000_000  # per image: larger is treated as a decompression bomb
    max_batch: int = 16  # pairs per forward pass; on the CPU smaller frames are packed (worker.engine.batch_limit)
    message_batches: int = Field(default=4, ge=1)  # max_batch x this pairs per queue message: decoding overlaps
    #                                                compute within it (CPU-packed small frames: fewer passes);
    #                                                fewer spread a small run over more workers
    feature_cache_bytes: int = 256 * 2**20
    decode_processes: int | None = Field(default=None, ge=0)  # None: by device (see worker.decoding);
    #                                                          0: decode in-process threads
    cuda_max_batch: int = Field(default=256, ge=1)  # pairs per forward pass on CUDA, at most (fewer where
    #                                                 the device's free memory is short)
    idle_trim_s: float | None = Field(default=60.0, gt=0)  # a worker idle this long hands its freed heap back
    max_attempts: int = 3  # a comparison that fails this often is recorded as an error

    task_soft_time_limit: int = 300
    task_time_limit: int = 360
    visibility_timeout: int = 3600
    orphan_after: int = 30  # seconds without a worker heartbeat before its comparisons are re-queued
    retry_tries: int = 3  # tries of a failing forward pass within one task (backoff + jitter), then handed back
    retry_base_s: float = 0.5  # first backoff; doubles per try, with full jitter
    store_retry_s: float = 60.0  # how long a worker keeps retrying an unreachable database before it gives a task up

    metrics_port: int | None = None
    heartbeat_file: Path = Field(default_factory=lambda: user_cache_path("lpips-gate") / "heartbeat")
    webhook_url: str | None = Field(default=None, repr=False)  # an Alertmanager's /api/v2/alerts, or several: a,b
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)  # more: a,b or JSON
    public_url: str = "http://127.0.0.1:8080"  # the HTTP pages: alerts link to {public_url}/runs/{id}
    runbook_url: str = "docs/runbook.md"  # where docs/runbook.md is published: alerts link to its #rule section
    webhook_timeout_s: float = Field(default=10.0, gt=0)  # per POST to the webhook
    alert_resend_s: float = Field(default=60.0, gt=0)  # open alerts re-sent this often, each valid 4x as long
    api_token: SecretStr | None = None  # `serve`: bearer token for writes (and reads); unset: writes refused
    api_read_token: SecretStr | None = None  # `serve`: bearer token for reads only; unset: reads are open
    api_max_body_bytes: int = Field(default=2**20, ge=1)  # `serve`: larger request bodies are refused (413)
    log_json: bool | None = None  # None: JSON unless stderr is a terminal (console lines there)
    log_level: str = "INFO"

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        """LPIPS_GATE_WEBHOOK_URLS: a JSON list or comma-separated URLs."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else _split_urls(text)
        return value

    @model_validator(mode="after")
    def _password_into_url(self) -> Settings:
        """LPIPS_GATE_DATABASE_PASSWORD completes LPIPS_GATE_DATABASE_URL, whatever password that holds."""
        if self.database_password is None:
            return self
        if self.embedded_store:
            raise ValueError("database_password: set LPIPS_GATE_DATABASE_URL too (the embedded SQLite store has none)")
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url).set(password=self.database_password.get_secret_value())
        self.database_url = url.render_as_string(hide_password=False)
        return self

    @property
    def alert_receivers(self) -> tuple[str, ...]:
        """Every Alertmanager alerts go to (webhook_url's, then webhook_urls', once each); none: alerts stay
        in the store."""
        return tuple(dict.fromkeys([*_split_urls(self.webhook_url or ""), *self.webhook_urls]))

    @property
    def embedded_store(self) -> bool:
        """The default database (no LPIPS_GATE_DATABASE_URL): the only one created on first use."""
        return "database_url" not in self.model_fields_set

    @property
    def pairs_per_message(self) -> int:
        """Comparison ids per queue message (and per claim of the embedded mode)."""
        return self.max_batch * self.message_batches
