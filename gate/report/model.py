"""What the HTML report and JUnit read of a judged run, validated up front so a bad field is named
(pairs.0.cand_thumb) instead of breaking the page half-way."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from gate.vocabulary import UNPAIRED

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FRAME_KEY = b"lpips-gate-frame"  # the heatmap PNG's tEXt chunk: the candidate's own "WIDTHxHEIGHT"
# what a browser shows, by magic (a WebP is RIFF....WEBP); the report embeds only PNG, JPEG and WebP
MEDIA_TYPES = {PNG_SIGNATURE: "image/png", b"\xff\xd8\xff": "image/jpeg", b"BM": "image/bmp", b"GIF8": "image/gif"}
REPORT_TYPES = ("image/png", "image/jpeg", "image/webp")

Box = tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt]  # x, y, w, h


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportLayer(_Strict):
    name: str
    distance: float | None = None


class ReportPair(_Strict):
    ref: str
    cand: str
    name: str | None = None  # the frame's path under the candidate folder
    status: Literal["done", "error", "new", "missing"]  # the comparison's: a judged run's have all finished
    verdict: Literal["pass", "fail", "error"]
    distance: float | None = None
    error: str | None = None
    warning: str | None = None  # a new or missing frame the run lets pass
    seconds: float | None = None
    ref_thumb: bytes | None = None  # small previews the worker made (PNG, JPEG or WebP)
    cand_thumb: bytes | None = None
    heatmap_png: bytes | None = None
    ref_file: str | None = None  # the full images, linked from the thumbnails
    cand_file: str | None = None
    layers: list[ReportLayer] = []
    scores: dict[str, float] | None = None
    reasons: list[str] = []  # the failed rules, or why the pair is an error
    limits: dict[str, float] = {}  # the limit each failed rule exceeded
    where: Box | None = None  # the first failed rule's location, in the candidate's pixels
    worst_region: Box | None = None  # the region score's box, outlined when no rule says where
    cand_size: tuple[PositiveInt, PositiveInt] | None = None  # (width, height): scales the box onto the pictures

    @field_validator("ref_thumb", "cand_thumb", "heatmap_png", mode="before")
    @classmethod
    def _picture(cls, value: object) -> object:
        if value is not None and image_type(value) is None:
            raise ValueError("not PNG, JPEG or WebP bytes")
        return value

    @model_validator(mode="after")
    def _scored_when_judged(self) -> ReportPair:
        if self.verdict != "error" and self.distance is None and self.status not in UNPAIRED:
            raise ValueError(f"a {self.verdict} pair needs its distance")
        return self

    @property
    def label(self) -> str:
        return f"{self.ref} -> {self.cand}"

    @property
    def outlined(self) -> Box | None:
        return self.where or self.worst_region


class ReportRun(_Strict):
    run: int | str
    suite: str
    verdict: Literal["pass", "fail", "error"]
    policy: str | None = None  # the hash of the policy that produced the verdict
    threshold: float | None = None
    net: str | None = None
    weights_version: str | None = None
    meta: dict[str, str] = {}  # what produced the run, as its submitter said (commit, pipeline...)
    reasons: list[str] = []  # why new or missing frames fail the run
    warnings: list[str] = []
    pairs: list[ReportPair]


def parse_run(run: dict[str, Any]) -> ReportRun:
    """Validate the plain-data run up front; errors name the offending key, e.g. pairs.0.cand_thumb."""
    try:
        return ReportRun.model_validate(run)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "run"
        raise ValueError(f"run report: {where}: {error['msg'].removeprefix('Value error, ')}") from None


def media_type(data: bytes) -> str | None:
    """A browser image's type from its first bytes (never from a name); None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((media for magic, media in MEDIA_TYPES.items() if data.startswith(magic)), None)


def image_type(data: object) -> str | None:
    """The MIME type of PNG, JPEG or WebP bytes, the ones the report embeds; None for anything else."""
    media = media_type(data) if isinstance(data, bytes) else None
    return media if media in REPORT_TYPES else None


def frame_size(heatmap: bytes | None) -> tuple[int, int] | None:
    """The candidate's (width, height) the worker wrote into its heatmap (a tEXt chunk): the heatmap
    is shrunk, the boxes are in the candidate's own pixels."""
    if heatmap is None or not heatmap.startswith(PNG_SIGNATURE):
        return None
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(heatmap):
        length, kind = int.from_bytes(heatmap[at:at + 4], "big"), heatmap[at + 4:at + 8]
        body = heatmap[at + 8:at + 8 + length]
        if kind == b"tEXt" and body.startswith(FRAME_KEY + b"\0"):
            width, _, height = body[len(FRAME_KEY) + 1:].decode("ascii", "replace").partition("x")
            size = (int(width), int(height)) if width.isdigit() and height.isdigit() else (0, 0)
            return size if min(size) > 0 else None
        at += 12 + length
    return None
