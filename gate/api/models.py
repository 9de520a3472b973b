"""The API's request and response bodies: what OpenAPI documents and what every answer is checked
against. Strings refuse NUL characters (no file name or database text may hold one)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gate.vocabulary import Net

Text = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00]+$")]
Id = Annotated[int, Path(ge=1, le=2**31 - 1, description="a run's or comparison's id")]  # the store's integer
MetaKey = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]  # a word, as `--meta KEY=VALUE` takes
MetaValue = Annotated[str, Field(max_length=1000, pattern=r"^[^\x00]*$")]


class PairIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: Text = Field(description="reference image, relative to the image root")
    cand: Text = Field(description="candidate image, relative to the image root")


class RunIn(BaseModel):
    """Two folders under the image root (paired by relative path, as `submit` pairs them), or pairs."""

    model_config = ConfigDict(extra="forbid")

    suite: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
    ref: Text | None = Field(default=None, description="reference folder, relative to the image root")
    cand: Text | None = Field(default=None, description="candidate folder, relative to the image root")
    pairs: list[PairIn] | None = Field(default=None, min_length=1, max_length=10_000)
    threshold: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                    description="max_distance: the run is then judged by it, whoever judges it")
    net: Net | None = None
    maps: bool = Field(default=True, description="store a heatmap per pair (the run page shows it)")
    missing: Literal["fail", "warn", "ignore"] = Field(
        default="fail", description="what new and missing frames do to the verdict, as `check --missing`")
    meta: dict[MetaKey, MetaValue] | None = Field(default=None, max_length=64,
                                                  description="what produced it: commit, pipeline, author...")

    @model_validator(mode="after")
    def _folders_or_pairs(self) -> RunIn:
        folders = (self.ref is not None, self.cand is not None)
        if self.pairs is None and folders != (True, True):
            raise ValueError("give both ref and cand (folders), or pairs")
        if self.pairs is not None and any(folders):
            raise ValueError("give folders (ref and cand) or pairs, not both")
        return self


class RunCreated(BaseModel):
    run: int


class PairOut(BaseModel):
    ref: str
    cand: str
    name: str = Field(description="the path relative to the candidate folder")
    status: str = Field(description="the comparison's: queued, running, done, error, new, missing")
    verdict: str | None
    distance: float | None
    error: str | None
    scores: dict[str, float | None] | None
    reasons: list[str]
    where: list[int] | None
    seconds: float | None
    warning: str | None


class RunOut(BaseModel):
    """`check --json`'s schema, with when the run was made, its metadata and its progress."""

    run: int
    suite: str
    verdict: str | None
    policy: str | None
    net: str
    weights_version: str | None
    meta: dict[str, Any]
    reasons: list[str]
    warnings: list[str]
    pairs: list[PairOut]
    created_at: str
    finished: int
    total: int


class RunListed(BaseModel):
    run: int
    suite: str
    verdict: str | None
    created_at: str
    meta: dict[str, Any]
    pairs: int
    finished: int


class AlertOut(BaseModel):
    id: int
    run: int | None
    rule: str
    suite: str
    state: Literal["open", "resolved"]
    labels: dict[str, Any]
    annotations: dict[str, Any]
    value: float | None
    threshold: float | None
    opened_at: str | None
    resolved_at: str | None


class TrendRun(BaseModel):
    run: int
    created_at: str
    verdict: str | None
    net: str
    pairs: int
    scored: int
    mean: float | None
    max: float | None


class DriftAlert(BaseModel):
    id: int
    run: int | None
    state: str
    value: float | None
    threshold: float | None
    labels: dict[str, Any]
    opened_at: str
    resolved_at: str | None


class Drift(BaseModel):
    alerts: list[DriftAlert]
    baseline_runs: list[int]
    window: int | None
    baseline_size: int | None


class TrendOut(BaseModel):
    suite: str
    runs: list[TrendRun]
    calibrations: list[dict[str, Any]] = Field(description="the newest calibration per net, as `calibrate --json`")
    drift: Drift


class Problem(BaseModel):
    detail: str


class ApproveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    only: Text | None = Field(default=None, description="approve only frames whose path under the candidate "
                                                        "folder matches this glob (fnmatch)")
    by: Annotated[str, Field(max_length=200, pattern=r"^[^\x00]+$")] | None = Field(
        default=None, description="who approved, recorded with each file")


class Approved(BaseModel):
    ref: str
    cand: str
    sha256_before: str | None
    sha256_after: str


class Skipped(BaseModel):
    ref: str
    cand: str
    status: str
    reason: str


class ApprovalOut(BaseModel):
    run: int
    approved: list[Approved]
    skipped: list[Skipped]
