"""HTML of the report (pure): the index table, one lazily materialised section per episode,
and the page around them built from ``template.html``, ``report.css`` and ``report.js``.

Invariants:
* Every text that came from a dataset or a model is HTML-escaped; nothing is fetched: the
  page's Content-Security-Policy allows only inline CSS/JS and ``data:`` images.
* An episode's heavy content (thumbnails, VQA frames) sits inside a ``<template>`` and is
  cloned into the page only when the section is opened, so hundreds of episodes stay light.
* VQA shapes are drawn in an SVG whose viewBox is the stored frame size, so pixel coordinates
  of the stored frame land on the right spot of a thumbnail of any size; their labels are
  placed inside that viewBox (moved below or to the left of the shape near an edge).
* Episode headers show at most ``TASK_HEADER_CHARS`` characters of the task (the rest as
  an ellipsis; the full text is the header's tooltip and stays in the index table).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from importlib import resources

import orjson

from narrator.common.validation import Finding
from narrator.inspection.report.model import EpisodeView, VqaItem

_PLACEHOLDER = re.compile(r"\{\{(TITLE|CSS|JS|BODY)\}\}")
TASK_HEADER_CHARS = 90
LABEL_CHAR_WIDTH = 0.6  # of the font size: an estimate of one character's width


@dataclass(frozen=True)
class EpisodeMedia:
    """Decoded pictures of one episode: the thumbnail strip and the drawn VQA frames."""

    strip_camera: str | None = None
    strip: tuple[tuple[float, str | None], ...] = ()  # (t, data URI or None)
    vqa: tuple[tuple[VqaItem, str | None], ...] = ()


@dataclass(frozen=True)
class PageContext:
    title: str
    facts: Sequence[str]  # one line each, shown under the title
    views: Sequence[EpisodeView]
    media: Mapping[int, EpisodeMedia]
    frame_sizes: Mapping[str, tuple[int, int]]  # camera -> (width, height) as stored
    dataset_findings: Sequence[Finding] = field(default=())
    episodes_total: int = 0


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _t(seconds: float) -> str:
    return f"{seconds:.2f}s"


def _pct(t: float, duration: float) -> str:
    value = 0.0 if duration <= 0 else max(0.0, min(100.0, 100.0 * t / duration))
    return f"{value:.3f}%"


def span_colour(index: int) -> str:
    return f"hsl({(index * 67 + 200) % 360} 65% 78%)"


def _badge(count: int, kind: str) -> str:
    css = kind if count else "ok"
    return f'<span class="badge {css}">{count} {kind}</span>'


# --- index -----------------------------------------------------------------------------------


def render_index(views: Sequence[EpisodeView]) -> str:
    heads = [
        ("episode", "episode", True),
        ("task", "task", False),
        ("frames", "frames", True),
        ("seconds", "length", True),
        ("subtasks", "subtasks", True),
        ("interjections", "interjections", True),
        ("vqa", "vqa", True),
        ("errors", "errors", True),
        ("warnings", "warnings", True),
    ]
    th = "".join(
        f'<th data-key="{key}"{" class=num" if num else ""}>{_e(label)}</th>'
        for key, label, num in heads
    )
    rows = []
    for v in views:
        search = _e(f"{v.episode} {v.task}".lower())
        cells = [
            (v.episode, f'<a class="ep-link" href="#ep-{v.episode}">{v.episode}</a>', True),
            (v.task, _e(v.task), False),
            (v.frames, str(v.frames), True),
            (round(v.duration_s, 3), _t(v.duration_s), True),
            (len(v.spans), str(len(v.spans)), True),
            (v.interjections, str(v.interjections), True),
            (len(v.vqa), str(len(v.vqa)), True),
            (v.errors, str(v.errors), True),
            (v.warnings, str(v.warnings), True),
        ]
        tds = "".join(
            f'<td data-v="{_e(value)}" class="{"num" if num else "task"}">{html}</td>'
            for value, html, num in cells
        )
        rows.append(
            f'<tr data-episode="{v.episode}" data-errors="{v.errors}" data-search="{search}">'
            f"{tds}</tr>"
        )
    return (
        '<div class="index-wrap"><table class="index" id="index">'
        f"<thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


# --- one episode -----------------------------------------------------------------------------


def _timeline(view: EpisodeView, media: EpisodeMedia) -> str:
    d = view.duration_s
    segs = "".join(
        f'<div class="seg" style="left:{_pct(s.start_s, d)};'
        f'width:{_pct(s.end_s - s.start_s, d)};background:{span_colour(i)}" '
        f'title="{_e(f"{_t(s.start_s)}-{_t(s.end_s)}: {s.label}")}">{_e(s.label)}</div>'
        for i, s in enumerate(view.spans)
    )
    symbols = {"interjection": "\u25b2", "speech": "\u25cf", "vqa": "\u25c6"}
    marks = "".join(
        f'<span class="mk mk-{m.kind}" style="left:{_pct(m.t, d)}" '
        f'title="{_e(f"{_t(m.t)} {m.kind}: {m.text}")}">{symbols.get(m.kind, "|")}</span>'
        for m in view.markers
    )
    figures = "".join(
        (
            f'<figure><img src="{uri}" alt="frame at {_t(t)}" loading="lazy">'
            if uri
            else '<figure><div class="noimg"></div>'
        )
        + f"<figcaption>{_t(t)}</figcaption></figure>"
        for t, uri in media.strip
    )
    camera = f" ({_e(media.strip_camera)})" if media.strip_camera else ""
    strip = f'<div class="strip" title="frames{camera}">{figures}</div>' if figures else ""
    legend = "\u25b2 interjection \u00b7 \u25cf robot speech \u00b7 \u25c6 VQA"
    if strip:
        legend += " \u00b7 thumbnails" + camera
    return (
        '<div class="timeline">'
        f'<div class="track spans">{segs}</div>'
        f'<div class="markers">{marks}</div>{strip}'
        f'<div class="axis"><span>0s</span><span>{_t(d)}</span></div></div>'
        f'<div class="legend">{legend}</div>'
    )


def _changes(view: EpisodeView) -> str:
    if not view.changes:
        return ""
    rows = "".join(
        f'<tr><td class="t">{_t(c.t)}</td><td class="style"><span class="badge">{_e(c.style)}'
        f'</span></td><td class="text">{_e(c.text)}</td></tr>'
        for c in view.changes
    )
    return f'<h3>Plan and memory</h3><table class="changes">{rows}</table>'


def _events(view: EpisodeView) -> str:
    order = {"interjection": 0, "speech": 1}  # the user speaks, then the robot answers
    said = sorted((m for m in view.markers if m.kind in order), key=lambda m: (m.t, order[m.kind]))
    if not said:
        return ""
    who = {"interjection": "user", "speech": "robot (say)"}
    rows = "".join(
        f'<tr><td class="t">{_t(m.t)}</td><td class="style"><span class="badge">'
        f'{_e(who[m.kind])}</span></td><td class="text">{_e(m.text)}</td></tr>'
        for m in said
    )
    return f'<h3>Interjections and speech</h3><table class="changes">{rows}</table>'


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: max(1, limit - 1)].rstrip() + "\u2026"


def label_position(
    anchor_x: float, top: float, bottom: float, text: str, font: int, width: int, height: int
) -> tuple[float, float, str]:
    """(x, baseline y, text) of a label for a shape spanning ``top``..``bottom`` at
    ``anchor_x``: above the shape, or below it when there is no room above, shifted left to
    end inside the image, and shortened if it is wider than the image (pure)."""
    fits = max(1, int(width / (font * LABEL_CHAR_WIDTH)))
    text = shorten(text, fits)
    text_width = len(text) * font * LABEL_CHAR_WIDTH
    x = min(max(0.0, anchor_x), max(0.0, width - text_width))
    y = top - 2 if top - 2 >= font else bottom + font + 2
    return x, min(max(float(font), y), float(height)), text


def _vqa_svg(item: VqaItem, width: int, height: int) -> str:
    font = max(8, width // 18)
    radius = max(2, width // 40)
    parts = []
    for box in item.boxes:
        x, y, text = label_position(box.x1, box.y1, box.y2, box.label, font, width, height)
        parts.append(
            f'<rect class="vqa-box" x="{box.x1:g}" y="{box.y1:g}" '
            f'width="{max(0.0, box.x2 - box.x1):g}" height="{max(0.0, box.y2 - box.y1):g}">'
            f"<title>{_e(box.label)}</title></rect>"
            f'<text class="vqa-label" x="{x:g}" y="{y:g}" '
            f'font-size="{font}">{_e(text)}</text>'
        )
    for point in item.points:
        x, y, text = label_position(
            point.x + 4, point.y - 2, point.y + 2, point.label, font, width, height
        )
        parts.append(
            f'<circle class="vqa-point" cx="{point.x:g}" cy="{point.y:g}" r="{radius}">'
            f"<title>{_e(point.label)}</title></circle>"
            f'<text class="vqa-label" x="{x:g}" y="{y:g}" '
            f'font-size="{font}">{_e(text)}</text>'
        )
    return (
        f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def _pretty_answer(text: str) -> str:
    """The answer's JSON on wrapping lines: one detection per line, spaces after commas."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(obj, dict) and isinstance(obj.get("detections"), list):
        lines = [json.dumps(d, separators=(", ", ": ")) for d in obj["detections"]]
        return "detections:\n" + "\n".join(lines)
    return json.dumps(obj, separators=(", ", ": "))


def _vqa(view: EpisodeView, media: EpisodeMedia, sizes: Mapping[str, tuple[int, int]]) -> str:
    if not media.vqa:
        return ""
    cards = []
    for item, uri in media.vqa:
        width, height = sizes.get(item.camera, (640, 480))
        picture = (
            f'<img src="{uri}" alt="{_e(item.camera)} at {_t(item.t)}" loading="lazy">'
            if uri
            else f'<div class="noimg" style="aspect-ratio:{width}/{height}"></div>'
        )
        kind = _e(item.qtype or "unrecognised")
        cards.append(
            f'<div class="vqa-card" data-frame="{item.frame}" data-camera="{_e(item.camera)}">'
            f'<div class="vqa-frame">{picture}{_vqa_svg(item, width, height)}</div>'
            f'<div class="q"><span class="badge">{kind}</span> '
            f'<span class="muted">{_e(item.camera)} @ {_t(item.t)}</span><br>{_e(item.question)}'
            f"</div><pre>{_e(_pretty_answer(item.answer))}</pre></div>"
        )
    shown = f"{len(media.vqa)} of {len(view.vqa)}"
    return f'<h3>VQA ({shown} answers)</h3><div class="vqa-grid">{"".join(cards)}</div>'


def render_findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return ""
    items = "".join(
        f'<li class="{f.severity}"><b>{_e(f.rule)}</b>'
        f"{' @ ' + _t(f.timestamp) if f.timestamp is not None else ''}"
        f"{' ' + _e(f.camera) if f.camera else ''}: {_e(f.message)}</li>"
        for f in findings
    )
    return f'<h3>Validation</h3><ul class="findings">{items}</ul>'


def render_episode(
    view: EpisodeView, media: EpisodeMedia, sizes: Mapping[str, tuple[int, int]]
) -> str:
    task = shorten(view.task, TASK_HEADER_CHARS)
    summary = (
        f'Episode {view.episode} <span class="task" title="{_e(view.task)}">\u2014 '
        f"{_e(task)} \u2014 "
        f"{view.frames} frames, {_t(view.duration_s)}, {len(view.spans)} subtasks</span> "
        f"{_badge(view.errors, 'err') if view.errors else ''}"
        f"{_badge(view.warnings, 'warn') if view.warnings else ''}"
    )
    content = (
        _timeline(view, media)
        + _changes(view)
        + _events(view)
        + _vqa(view, media, sizes)
        + render_findings(view.findings)
    )
    return (
        f'<details class="episode" id="ep-{view.episode}" data-episode="{view.episode}">'
        f'<summary>{summary}</summary><div class="ep-body"></div>'
        f'<template class="ep-content">{content}</template></details>'
    )


# --- the page ----------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return resources.files("narrator.inspection.report").joinpath(name).read_text(encoding="utf-8")


def render_page(ctx: PageContext) -> str:
    facts = "".join(f"<div>{_e(line)}</div>" for line in ctx.facts)
    dataset_findings = render_findings(ctx.dataset_findings)
    more = ""
    if ctx.episodes_total > len(ctx.views):
        more = f" ({ctx.episodes_total} in the dataset)"
    episodes = "".join(
        render_episode(v, ctx.media.get(v.episode, EpisodeMedia()), ctx.frame_sizes)
        for v in ctx.views
    )
    body = (
        f'<header class="top"><h1>{_e(ctx.title)}</h1><div class="facts">{facts}</div></header>'
        f"<main>{dataset_findings}"
        '<div class="controls"><input type="search" id="filter" '
        'placeholder="filter by episode or task" aria-label="filter episodes">'
        '<label><input type="checkbox" id="only-errors"> only episodes with errors</label>'
        f'<span><span id="shown-count">{len(ctx.views)}</span> of {len(ctx.views)} shown'
        f"{more}"
        "</span>"
        '<button type="button" id="open-visible">open shown</button>'
        '<button type="button" id="close-all">close all</button></div>'
        f"{render_index(ctx.views)}{episodes}</main>"
    )
    values = {"TITLE": _e(ctx.title), "CSS": _asset("report.css"), "JS": _asset("report.js")}
    values["BODY"] = body
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _asset("template.html"))
