"""A run as one self-contained HTML file (inline CSS, images as data URIs) that can be attached to a
CI job or mailed: nothing to serve, nothing fetched when opened."""

from __future__ import annotations

import base64
from html import escape
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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_WIDTH_PX = 352  # three side by side fit a 1200 px window
WHERE_COLOUR = (0, 255, 0)  # outlines the failing (else the worst) region: a colour the inferno ramp never takes
SEVERITY = {"error": 0, "fail": 1, "pass": 2}  # worst first in the report


Box = tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt]  # x, y, w, h


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportLayer(_Strict):
    name: str
    distance: float | None = None


class ReportPair(_Strict):
    ref: str
    cand: str
    status: Literal["done", "error"]  # the comparison's: a judged run's have all finished
    verdict: Literal["pass", "fail", "error"]
    distance: float | None = None
    error: str | None = None
    ref_png: bytes | None = None
    cand_png: bytes | None = None
    heatmap_png: bytes | None = None
    layers: list[ReportLayer] = []
    scores: dict[str, float] | None = None
    reasons: list[str] = []  # the failed rules, or why the pair is an error
    limits: dict[str, float] = {}  # the limit each failed rule exceeded
    where: Box | None = None  # the first failed rule's location, in the candidate's pixels
    worst_region: Box | None = None  # the region score's box, outlined when no rule says where
    cand_size: tuple[PositiveInt, PositiveInt] | None = None  # (width, height): scales the box onto the heatmap

    @field_validator("ref_png", "cand_png", "heatmap_png", mode="before")
    @classmethod
    def _png(cls, value: object) -> object:
        if value is not None and not (isinstance(value, bytes) and value.startswith(PNG_SIGNATURE)):
            raise ValueError("not PNG bytes")
        return value

    @model_validator(mode="after")
    def _scored_when_judged(self) -> ReportPair:
        if self.verdict != "error" and self.distance is None:
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
    pairs: list[ReportPair]


def parse_run(run: dict[str, Any]) -> ReportRun:
    """Validate the plain-data run up front; errors name the offending key, e.g. pairs.0.ref_png."""
    try:
        return ReportRun.model_validate(run)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "run"
        raise ValueError(f"run report: {where}: {error['msg'].removeprefix('Value error, ')}") from None


def render_html(run: dict[str, Any]) -> str:
    report = parse_run(run)
    pairs = sorted(report.pairs, key=lambda pair: SEVERITY[pair.verdict])
    title = f"{report.suite} · run {report.run} · {report.verdict.upper()}"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>lpips-gate · {escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            _header(report),
            *(_pair_section(pair, report.threshold) for pair in pairs),
            "</body></html>",
        ]
    )


def _header(report: ReportRun) -> str:
    counts = {verdict: sum(pair.verdict == verdict for pair in report.pairs) for verdict in SEVERITY}
    tally = ", ".join(f"{counts[verdict]} {verdict}" for verdict in ("pass", "fail", "error"))
    policy = "" if report.policy is None else f" · policy {escape(report.policy[:12])}"
    return (
        f"<header><h1>{escape(report.suite)} {_badge(report.verdict)}</h1>"
        f"<p>run {escape(str(report.run))} · threshold {_number(report.threshold)}{policy} · "
        f"{len(report.pairs)} comparisons: {tally}</p></header>"
    )


def _pair_section(pair: ReportPair, threshold: float | None) -> str:
    if pair.verdict == "error":
        score = f'<p class="score error-text">{escape(pair.error or "comparison failed")}</p>'
    else:
        failed = f" · failed: {escape(', '.join(pair.reasons))}" if pair.reasons else ""
        score = (f'<p class="score">distance <b>{_number(pair.distance)}</b> / threshold {_number(threshold)}'
                 f"{failed}</p>")
    return (
        f'<section class="pair {pair.verdict}"><h2>{_badge(pair.verdict)} {escape(pair.label)}</h2>'
        f"{score}{_images(pair)}{_layer_bars(pair.layers)}</section>"
    )


def _images(pair: ReportPair) -> str:
    if all(png is None for png in (pair.ref_png, pair.cand_png, pair.heatmap_png)):
        return ""
    figures = (_figure(pair.ref_png, "reference"), _figure(pair.cand_png, "candidate"),
               _figure(pair.heatmap_png, "LPIPS heatmap", _outline(pair)))
    return f'<div class="images">{"".join(figures)}</div>'


def _figure(png: bytes | None, caption: str, overlay: str = "") -> str:
    if png is None:
        picture = '<div class="missing">no image</div>'
    else:
        image = f'<img alt="{caption}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        picture = f'<div class="frame">{image}{overlay}</div>'
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _outline(pair: ReportPair) -> str:
    """The box over the heatmap, in percent of the candidate's size, so it scales with the image shown."""
    box = pair.outlined
    if box is None or pair.cand_size is None:
        return ""
    (x, y, w, h), (width, height) = box, pair.cand_size
    place = (f"left:{100 * x / width:.3f}%;top:{100 * y / height:.3f}%;"
             f"width:{100 * w / width:.3f}%;height:{100 * h / height:.3f}%")
    return f'<span class="where" title="{x},{y} {w}x{h} px" style="{place}"></span>'


def _layer_bars(layers: list[ReportLayer]) -> str:
    """Each layer's share of the pair's distance (LPIPS sums its layers), as CSS bars."""
    if not layers:
        return ""
    total = sum(layer.distance for layer in layers if layer.distance is not None)
    rows = []
    for layer in layers:
        share = layer.distance / total if layer.distance is not None and total > 0 else 0.0
        value = "n/a" if layer.distance is None else f"{_number(layer.distance)} ({share:.0%})"
        rows.append(
            f'<div class="layer"><span class="name">{escape(layer.name)}</span>'
            f'<span class="track"><span class="bar" style="width:{share * 100:.1f}%"></span></span>'
            f'<span class="value">{value}</span></div>'
        )
    return f'<div class="layers"><h3>per-layer contribution</h3>{"".join(rows)}</div>'


def _badge(verdict: str) -> str:
    return f'<span class="badge {verdict}">{verdict.upper()}</span>'


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:16px 24px;background:#f6f8fa;color:#1f2328}
header h1{margin:0 0 4px;font-size:22px}header p{margin:0 0 16px;color:#59636e}
.pair{background:#fff;border:1px solid #d1d9e0;border-left:6px solid #1a7f37;border-radius:6px;
 padding:12px 16px;margin:0 0 16px}
.pair.fail{border-left-color:#cf222e}.pair.error{border-left-color:#9a6700}
.pair h2{font-size:16px;margin:0 0 4px;word-break:break-all}.score{margin:0 0 8px}.error-text{color:#9a6700}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
 vertical-align:middle;background:#1a7f37}
.badge.fail{background:#cf222e}.badge.error{background:#9a6700}
.images{display:flex;gap:12px;flex-wrap:wrap}figure{margin:0}
.frame{position:relative;width:IMAGE_WIDTHpx;border:1px solid #d1d9e0}.frame img{display:block;width:100%;height:auto}
.where{position:absolute;box-sizing:border-box;min-width:6px;min-height:6px;border:2px solid WHERE}
.missing{display:block;width:IMAGE_WIDTHpx;height:auto;border:1px solid #d1d9e0}
.missing{height:198px;line-height:198px;text-align:center;color:#59636e;background:#eff2f5}
figcaption{color:#59636e;font-size:12px;margin-top:2px}
.layers{margin-top:10px;max-width:640px}.layers h3{font-size:13px;margin:0 0 4px;color:#59636e}
.layer{display:flex;align-items:center;gap:8px;font-size:12px;margin:2px 0}
.name{width:90px;overflow:hidden;text-overflow:ellipsis}.value{width:120px;font-variant-numeric:tabular-nums}
.track{flex:1;height:10px;background:#eff2f5;border-radius:3px}
.bar{display:block;height:100%;background:#0969da;border-radius:3px}
""".replace("IMAGE_WIDTH", str(IMAGE_WIDTH_PX)).replace("WHERE", "#{:02x}{:02x}{:02x}".format(*WHERE_COLOUR))
