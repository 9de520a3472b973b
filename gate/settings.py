"""One Settings object, read from LPIPS_GATE_* variables and passed down; nothing is built at import."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_path, user_data_path
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gate.vocabulary import Device, Net, Precision


def _default_database_url() -> str:
    folder = user_data_path("lpips-gate")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'lpips-gate.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LPIPS_GATE_", extra="ignore")

    database_url: str = Field(default_factory=_default_database_url)
    broker_url: str | None = None  # None: run the work in-process (the embedded default)
    weights_dir: Path = Field(default_factory=lambda: user_cache_path("lpips-gate") / "weights")
    image_root: Path = Field(default_factory=Path.cwd)  # the only folder task paths may point into

    net: Net = "alex"
    version: str = "0.1"
    fallback_net: Net | None = "vgg"  # differs from `net`: the same backbone again is no fallback
    device: Device = "auto"
    precision: Precision = "fp32"

    max_pixels: int = 64_000_000  # per image: larger is treated as a decompression bomb
    max_batch: int = 16  # pairs per forward pass
    message_batches: int = Field(default=4, ge=1)  # forward passes per queue message: decoding overlaps compute
    #                                                within a message; fewer spread a small run over more workers
    feature_cache_bytes: int = 256 * 2**20
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
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(default=10.0, gt=0)  # per POST to the webhook
    alert_resend_s: float = Field(default=60.0, gt=0)  # open alerts re-sent this often, each valid 4x as long
    api_token: SecretStr | None = None  # `serve`: bearer token for writes (and reads); unset: writes refused
    api_read_token: SecretStr | None = None  # `serve`: bearer token for reads only; unset: reads are open
    api_max_body_bytes: int = Field(default=2**20, ge=1)  # `serve`: larger request bodies are refused (413)
    log_json: bool = True
    log_level: str = "INFO"

    @property
    def embedded_store(self) -> bool:
        """The default database (no LPIPS_GATE_DATABASE_URL): the only one created on first use."""
        return "database_url" not in self.model_fields_set

    @property
    def pairs_per_message(self) -> int:
        """Comparison ids per queue message (and per claim of the embedded mode)."""
        return self.max_batch * self.message_batches
