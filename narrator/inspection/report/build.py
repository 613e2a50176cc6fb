"""``narrator report``'s shell: read the dataset, validate it, decode thumbnails, write the page.

Invariants:
* Reads the dataset only; the one file written is ``out`` (through a temporary file and an
  atomic rename, so a reader never sees half a report).
* The report holds no secrets: no environment, no URLs, no absolute paths (the dataset is
  named by its directory name).
* Thumbnails come from each episode's span of its video files (``from_timestamp + t``);
  cameras stored as images (not video) get placeholders.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from narrator.common.dataset.language import EpisodeLanguage, read_file_language
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.logging import get_logger
from narrator.common.validation import Finding
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.inspection.report.html import EpisodeMedia, PageContext, render_page
from narrator.inspection.report.model import (
    EpisodeView,
    VqaItem,
    build_episode_view,
    pick_vqa,
    thumbnail_frames,
)
from narrator.inspection.report.thumbs import thumbnails

log = get_logger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    max_episodes: int = 200
    thumbnails: int = 8
    max_vqa: int = 6
    strip_width: int = 160
    vqa_width: int = 256
    jpeg_quality: int = 70


@dataclass(frozen=True)
class ReportSummary:
    episodes_total: int
    episodes_shown: int
    errors: int
    warnings: int
    bytes_written: int


def _strip_media(
    meta: DatasetMeta, lang: EpisodeLanguage, options: ReportOptions
) -> tuple[str | None, tuple[tuple[float, str | None], ...]]:
    frames = thumbnail_frames(lang.frames, options.thumbnails)
    times = [float(lang.timestamps[f]) for f in frames]
    spans = meta.episode(lang.episode).videos
    if not spans:
        return None, tuple((t, None) for t in times)
    camera = next(c.key for c in meta.cameras if c.key in spans)
    span = spans[camera]
    uris = thumbnails(
        span.path,
        [span.from_timestamp_s + t for t in times],
        max_width=options.strip_width,
        quality=options.jpeg_quality,
    )
    return camera, tuple((t, uris.get(span.from_timestamp_s + t)) for t in times)


def _vqa_media(
    meta: DatasetMeta, view: EpisodeView, options: ReportOptions
) -> tuple[tuple[VqaItem, str | None], ...]:
    chosen = pick_vqa(view.vqa, options.max_vqa)
    spans = meta.episode(view.episode).videos
    by_camera: dict[str, list[VqaItem]] = defaultdict(list)
    for item in chosen:
        by_camera[item.camera].append(item)
    uris: dict[tuple[int, str], str] = {}
    for camera, items in by_camera.items():
        span = spans.get(camera)
        if span is None:
            continue
        decoded = thumbnails(
            span.path,
            [span.from_timestamp_s + i.t for i in items],
            max_width=options.vqa_width,
            quality=options.jpeg_quality,
        )
        for item in items:
            uri = decoded.get(span.from_timestamp_s + item.t)
            if uri is not None:
                uris[(item.frame, camera)] = uri
    return tuple((item, uris.get((item.frame, item.camera))) for item in chosen)


def _facts(meta: DatasetMeta, shown: int, findings: list[Finding]) -> list[str]:
    cameras = ", ".join(f"{c.key} ({c.width}x{c.height})" for c in meta.cameras) or "none"
    frames = sum(e.length for e in meta.episodes.values())
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = sum(1 for f in findings if f.severity == "warning")
    return [
        f"{len(meta.episodes)} episodes, {frames} frames at {meta.fps:g} fps; showing {shown}",
        f"cameras: {cameras}",
        f"validation: {errors} error(s), {warnings} warning(s)",
    ]


def _write_atomically(out: Path, text: str) -> int:
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def build_report(root: Path, out: Path, options: ReportOptions | None = None) -> ReportSummary:
    """Write the HTML report of the annotated dataset at ``root`` to ``out``."""
    options = options or ReportOptions()
    meta = load_dataset_meta(root)
    check = check_annotated_dataset(meta.root)
    findings_by_episode: dict[int, list[Finding]] = defaultdict(list)
    for finding in check.findings:
        findings_by_episode[finding.episode].append(finding)
    shown = sorted(meta.episodes)[: options.max_episodes]
    wanted_files = sorted({meta.episodes[e].data_file for e in shown})
    language: dict[int, EpisodeLanguage] = {}
    for data_file in wanted_files:
        language.update(read_file_language(meta, data_file))
    views: list[EpisodeView] = []
    media: dict[int, EpisodeMedia] = {}
    for episode in shown:
        lang = language.get(episode)
        if lang is None:
            continue
        view = build_episode_view(
            lang,
            task=meta.tasks.get(lang.task_index, ""),
            fps=meta.fps,
            findings=findings_by_episode.get(episode, []),
        )
        camera, strip = _strip_media(meta, lang, options)
        media[episode] = EpisodeMedia(camera, strip, _vqa_media(meta, view, options))
        views.append(view)
    page = render_page(
        PageContext(
            title=f"narrator report: {meta.root.name}",
            facts=_facts(meta, len(views), check.findings),
            views=views,
            media=media,
            frame_sizes={c.key: (c.width, c.height) for c in meta.cameras},
            dataset_findings=findings_by_episode.get(-1, []),
            episodes_total=len(meta.episodes),
        )
    )
    size = _write_atomically(out, page)
    log.info("report_written", out=str(out), episodes=len(views), bytes=size)
    return ReportSummary(
        episodes_total=len(meta.episodes),
        episodes_shown=len(views),
        errors=check.errors,
        warnings=check.warnings,
        bytes_written=size,
    )
