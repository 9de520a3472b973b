"""A run as one self-contained HTML file (inline CSS and script, previews as data URIs) that can be
attached to a CI job or mailed: nothing to serve, nothing fetched when opened. Built for reviewing
hundreds of frames: failures first, a filter, an A/B slider and blink per pair, heatmaps on one fixed
scale with its colour bar, the failing (else the worst) region boxed. Full images are linked, not
embedded, so a run of a thousand 4K frames stays a small file."""

from __future__ import annotations

import base64
import os
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gate.report.model import ReportLayer, ReportPair, ReportRun, image_type, parse_run
from gate.vocabulary import HEATMAP_LEVELS, HEATMAP_RAMP, HEATMAP_SCALE, THUMBNAIL_PX, UNPAIRED

__all__ = ["IMAGE_WIDTH_PX", "WHERE_COLOUR", "ReportPair", "ReportRun", "parse_run", "render_html"]

IMAGE_WIDTH_PX = THUMBNAIL_PX  # previews are shown at the size the worker stores them
WHERE_COLOUR = (0, 255, 0)  # boxes the failing (else the worst) region: a colour the inferno ramp never takes
ORDER = {"fail": 0, "error": 1, "pass": 2}  # failures first, then errors; worst distance first within each
SCALE_TICKS = 4  # colour bar labels: 0, a quarter, ... the scale
BROWSER_IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what a new or missing frame can show as it is
FILTERS = (("all", "all"), ("fail", "failing"), ("unpaired", "new + missing"), ("error", "errors"))


def render_html(run: dict[str, Any], *, links_from: Path | None = None) -> str:
    """The page; full images are linked relative to `links_from` (the report's folder), else by file URI."""
    report = parse_run(run)
    pairs = sorted(report.pairs, key=_order)
    title = f"{report.suite} · run {report.run} · {report.verdict.upper()}"
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width,initial-scale=1">',
            f"<title>lpips-gate · {escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            _header(report),
            _filters(report.pairs),
            "<main>",
            *(_pair_section(number, pair, report.threshold, links_from) for number, pair in enumerate(pairs)),
            "</main>",
            f"<script>{SCRIPT}</script>",
            "</body></html>",
        ]
    )


def _order(pair: ReportPair) -> tuple[int, bool, float]:
    return ORDER[pair.verdict], pair.distance is None, -(pair.distance or 0.0)


def _header(report: ReportRun) -> str:
    facts = [("run", str(report.run)), ("suite", report.suite), ("verdict", report.verdict.upper()),
             ("comparisons", _tally(report.pairs)), ("threshold", _number(report.threshold)),
             ("net", report.net or "n/a"), ("weights", report.weights_version or "n/a"),
             ("policy", report.policy[:12] if report.policy else "n/a")]
    rows = "".join(f'<tr><th scope="row">{escape(key)}</th><td>{escape(value)}</td></tr>' for key, value in facts)
    notes = "".join(f'<li class="fail-text">{escape(reason)}</li>' for reason in report.reasons)
    notes += "".join(f'<li class="warn-text">{escape(warning)}</li>' for warning in report.warnings)
    meta = ""
    if report.meta:
        meta_rows = "".join(f'<tr><th scope="row">{escape(key)}</th><td>{escape(value)}</td></tr>'
                            for key, value in sorted(report.meta.items()))
        meta = f'<table class="meta"><caption>run metadata</caption>{meta_rows}</table>'
    return (
        f"<header><h1>{escape(report.suite)} {_badge(report.verdict)}</h1>"
        f'<div class="facts"><table class="summary"><caption>run summary</caption>{rows}</table>{meta}'
        f'<div class="legend"><span>heatmap scale</span>{_colour_bar()}</div></div>'
        f"{_notes(notes)}</header>"
    )


def _notes(items: str) -> str:
    return f'<ul class="notes">{items}</ul>' if items else ""


def _tally(pairs: list[ReportPair]) -> str:
    counts = {verdict: sum(pair.verdict == verdict for pair in pairs) for verdict in ("pass", "fail", "error")}
    counts |= {status: sum(pair.status == status for pair in pairs) for status in UNPAIRED}
    shown = ", ".join(f"{count} {what}" for what, count in counts.items() if count or what in ORDER)
    return f"{len(pairs)}: {shown}"


def _filters(pairs: list[ReportPair]) -> str:
    counts = {"all": len(pairs), "fail": sum(p.verdict == "fail" for p in pairs),
              "unpaired": sum(p.status in UNPAIRED for p in pairs), "error": sum(p.verdict == "error" for p in pairs)}
    choices = "".join(
        f'<label><input type="radio" name="show" value="{value}"{" checked" if value == "all" else ""}>'
        f" {text} ({counts[value]})</label>"
        for value, text in FILTERS
    )
    return (
        '<nav class="filters" aria-label="filter the pairs">'
        f"<fieldset><legend>show</legend>{choices}</fieldset>"
        '<label>path contains <input type="search" id="path-filter" placeholder="e.g. shots/ui_"></label>'
        f'<output id="shown" aria-live="polite">{len(pairs)} of {len(pairs)} shown</output></nav>'
    )


def _pair_section(number: int, pair: ReportPair, threshold: float | None, links_from: Path | None) -> str:
    flags = [f"data-{flag}" for flag, on in (("fail", pair.verdict == "fail"), ("error", pair.verdict == "error"),
                                             ("unpaired", pair.status in UNPAIRED)) if on]
    status = f" {_badge(pair.status)}" if pair.status in UNPAIRED else ""
    return (
        f'<section class="pair {pair.verdict}" {" ".join(flags)} data-path="{escape(pair.label.lower())}"'
        f' aria-labelledby="p{number}"><h2 id="p{number}">{_badge(pair.verdict)}{status} {escape(pair.label)}</h2>'
        f"{_score(pair, threshold)}{_images(pair, links_from)}{_layer_bars(pair.layers)}</section>"
    )


def _score(pair: ReportPair, threshold: float | None) -> str:
    if pair.status in UNPAIRED:
        side = "no reference: a new frame" if pair.status == "new" else "no candidate: a missing frame"
        note = f" · {escape(pair.warning)}" if pair.warning else ""
        return f'<p class="score">{side}{note}</p>'
    if pair.verdict == "error":
        return f'<p class="score error-text">{escape(pair.error or "comparison failed")}</p>'
    failed = f" · failed: {escape(', '.join(pair.reasons))}" if pair.reasons else ""
    return f'<p class="score">distance <b>{_number(pair.distance)}</b> / threshold {_number(threshold)}{failed}</p>'


def _images(pair: ReportPair, links_from: Path | None) -> str:
    ref_link, cand_link = (_href(path, links_from) for path in (pair.ref_file, pair.cand_file))
    figures = []
    if pair.ref_thumb is not None and pair.cand_thumb is not None:
        figures.append(_viewer(pair, ref_link, cand_link))
    else:
        for side, thumb, link in (("reference", pair.ref_thumb, ref_link), ("candidate", pair.cand_thumb, cand_link)):
            if thumb is not None:
                figures.append(_figure(side, _img(thumb, side, pair.cand_size), link))
            elif pair.status in UNPAIRED and link is not None and _is_shown_as_is(link):
                figures.append(_figure(side, _linked_img(link, side), link))  # never computed: no preview
    if pair.heatmap_png is not None:
        figures.append(_heatmap(pair))
    return f'<div class="images">{"".join(figures)}</div>' if figures else ""


def _viewer(pair: ReportPair, ref_link: str | None, cand_link: str | None) -> str:
    """Candidate over reference, clipped at a draggable divider (a range input sets --split), or
    blinking between the two: the region boxed on both; a click opens the full image of the side clicked."""
    assert pair.ref_thumb is not None and pair.cand_thumb is not None
    return (
        '<figure class="ab">'
        f'<div class="frame viewer"{_data_link("ref", ref_link)}{_data_link("cand", cand_link)}>'
        f'{_img(pair.ref_thumb, "reference", pair.cand_size, "ref")}'
        f'{_img(pair.cand_thumb, "candidate", pair.cand_size, "cand")}<span class="divider"></span>'
        f"{_outline(pair)}</div>"
        '<div class="controls"><span aria-hidden="true">reference</span>'
        '<input type="range" min="0" max="100" value="50" aria-label="A/B divider, reference to candidate">'
        '<span aria-hidden="true">candidate</span>'
        '<button type="button" class="blink" aria-pressed="false">blink</button></div>'
        f"<figcaption>full size: {_link(ref_link, 'reference')} · {_link(cand_link, 'candidate')}</figcaption>"
        "</figure>"
    )


def _data_link(side: str, link: str | None) -> str:
    """The full image a click on that side of the viewer opens."""
    return "" if link is None else f' data-{side}="{escape(link)}"'


def _figure(caption: str, picture: str, link: str | None) -> str:
    framed = picture if link is None else f'<a href="{escape(link)}" title="full size {caption}">{picture}</a>'
    return f'<figure><div class="frame">{framed}</div><figcaption>{caption}</figcaption></figure>'


def _heatmap(pair: ReportPair) -> str:
    assert pair.heatmap_png is not None
    return (
        '<figure class="heat"><div class="row">'
        f'<div class="frame">{_img(pair.heatmap_png, "LPIPS heatmap", pair.cand_size)}{_outline(pair)}</div>'
        f"{_colour_bar()}</div><figcaption>LPIPS heatmap, fixed scale</figcaption></figure>"
    )


def _img(data: bytes, alt: str, size: tuple[int, int] | None, role: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    role_class = f' class="{role}"' if role else ""
    return (f'<img{role_class} alt="{alt}"{_dimensions(size)} loading="lazy" decoding="async" '
            f'src="data:{image_type(data)};base64,{encoded}">')


def _linked_img(link: str, alt: str) -> str:
    return f'<img alt="{alt} (from its file)" loading="lazy" decoding="async" src="{escape(link)}">'


def _dimensions(size: tuple[int, int] | None) -> str:
    """The shown size up front, so the page does not reflow as lazy images arrive."""
    if size is None:
        return ""
    width, height = size
    return f' width="{IMAGE_WIDTH_PX}" height="{max(1, round(IMAGE_WIDTH_PX * height / width))}"'


def _outline(pair: ReportPair) -> str:
    """The box in percent of the candidate's size, so it scales with the picture shown."""
    box = pair.outlined
    if box is None or pair.cand_size is None:
        return ""
    (x, y, w, h), (width, height) = box, pair.cand_size
    place = (f"left:{100 * x / width:.3f}%;top:{100 * y / height:.3f}%;"
             f"width:{100 * w / width:.3f}%;height:{100 * h / height:.3f}%")
    return f'<span class="where" title="region {x},{y} {w}x{h} px" style="{place}"></span>'


def _colour_bar() -> str:
    """The heatmaps' scale: the ramp bottom (0) to top (HEATMAP_SCALE and above, saturated)."""
    ticks = "".join(
        f"<span>{HEATMAP_SCALE * i / SCALE_TICKS:.2f}{'+' if i == SCALE_TICKS else ''}</span>"
        for i in range(SCALE_TICKS, -1, -1)
    )
    label = f"colour scale: dark 0 to bright {HEATMAP_SCALE:g} and above"
    return (f'<div class="scale" role="img" aria-label="{label}">'
            f'<span class="ramp"></span><span class="ticks">{ticks}</span></div>')


def _href(path: str | None, links_from: Path | None) -> str | None:
    if path is None:
        return None
    if links_from is None:
        return Path(path).absolute().as_uri()
    return quote(Path(os.path.relpath(path, links_from.absolute())).as_posix())


def _is_shown_as_is(link: str) -> bool:
    return link.lower().endswith(BROWSER_IMAGES)


def _link(href: str | None, text: str) -> str:
    return text if href is None else f'<a href="{escape(href)}">{text}</a>'


def _layer_bars(layers: list[ReportLayer]) -> str:
    """Each layer's share of the pair's distance (LPIPS sums its layers), as CSS bars."""
    if not layers:
        return ""
    total = sum(layer.distance for layer in layers if layer.distance is not None)
    rows = []
    for layer in layers:
        share = layer.distance / total if layer.distance is not None and total > 0 else 0.0
        value = "n/a" if layer.distance is None else f"{_number(layer.distance)} ({share:.0%})"
        rows.append(f'<div class="layer"><span>{escape(layer.name)}</span><span class="track">'
                    f'<span style="width:{share * 100:.1f}%"></span></span><span>{value}</span></div>')
    return f'<details class="layers"><summary>per-layer contribution</summary>{"".join(rows)}</details>'


def _badge(verdict: str) -> str:
    return f'<span class="badge {verdict}">{verdict.upper()}</span>'


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def _asset(name: str) -> str:
    return files("gate.report").joinpath("assets", name).read_text(encoding="utf-8")


def _ramp_gradient() -> str:
    """The colour bar in the heatmaps' own steps: the ramp at each level, as hard stops."""
    stops = []
    for level in range(HEATMAP_LEVELS):
        colour = _ramp_at(level / (HEATMAP_LEVELS - 1))
        low, high = 100 * level / HEATMAP_LEVELS, 100 * (level + 1) / HEATMAP_LEVELS
        stops.append(f"rgb{colour} {low:.2f}% {high:.2f}%")
    return f"linear-gradient(to top, {', '.join(stops)})"


def _ramp_at(share: float) -> tuple[int, ...]:
    """The ramp's colour at `share` of the scale, interpolated between its anchors as the worker paints."""
    position = share * (len(HEATMAP_RAMP) - 1)
    low = min(int(position), len(HEATMAP_RAMP) - 2)
    frac = position - low
    anchors = zip(HEATMAP_RAMP[low], HEATMAP_RAMP[low + 1], strict=True)
    return tuple(round(a * (1 - frac) + b * frac) for a, b in anchors)


STYLE = (_asset("report.css").replace("IMAGE_WIDTH", str(IMAGE_WIDTH_PX)).replace("RAMP", _ramp_gradient())
         .replace("WHERE", "#{:02x}{:02x}{:02x}".format(*WHERE_COLOUR)))
SCRIPT = _asset("report.js")
