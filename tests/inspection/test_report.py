"""Tests of ``narrator report``: the view model, thumbnail decoding, the self-contained page,
and the page itself in headless Chromium (no page errors, index, timelines, VQA overlays)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from narrator.common.dataset.language import read_episode_language
from narrator.common.dataset.reader import load_dataset_meta
from narrator.inspection.report.build import ReportOptions, build_report
from narrator.inspection.report.model import build_episode_view, pick_vqa, thumbnail_frames
from narrator.inspection.report.thumbs import decode_at
from narrator.samples.video import read_frame_code
from tests.support.annotated_fixture import break_dataset, make_annotated_dataset

EPISODES = 5
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_annotated_dataset(tmp_path_factory.mktemp("rep") / "ds", episodes=EPISODES)


@pytest.fixture(scope="module")
def report_file(annotated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    summary = build_report(annotated, out, ReportOptions(max_vqa=4))
    assert summary.episodes_shown == EPISODES and summary.errors == 0
    assert summary.bytes_written == out.stat().st_size
    return out


def test_thumbnail_frames_are_bin_centres() -> None:
    assert thumbnail_frames(80, 8) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert thumbnail_frames(3, 8) == [0, 1, 2]
    assert thumbnail_frames(0, 8) == [] and thumbnail_frames(10, 0) == []


def test_episode_view(annotated: Path) -> None:
    meta = load_dataset_meta(annotated)
    lang = read_episode_language(meta, 1)
    view = build_episode_view(lang, task="t", fps=meta.fps)
    n = lang.frames
    assert view.frames == n == meta.episodes[1].length
    assert view.duration_s == pytest.approx(float(lang.timestamps[-1]) + 0.1)
    assert [round(s.start_s, 4) for s in view.spans] == [
        round(float(lang.timestamps[f]), 4) for f in (0, n // 3, 2 * n // 3)
    ]
    assert view.spans[-1].end_s == view.duration_s
    assert all(a.end_s == b.start_s for a, b in zip(view.spans, view.spans[1:], strict=False))
    assert view.interjections == 1
    assert [m.kind for m in view.markers].count("speech") == 2
    assert {c.style for c in view.changes} == {"plan", "memory", "task_aug"}
    drawable = [i for i in view.vqa if i.boxes or i.points]
    assert drawable and all(i.qtype in ("bbox", "keypoint") for i in drawable)
    for item in drawable:
        for box in item.boxes:
            assert 0 <= box.x1 < box.x2 <= 96 and 0 <= box.y1 < box.y2 <= 72
    chosen = pick_vqa(view.vqa, 3)
    assert len(chosen) == 3 and all(i.boxes or i.points for i in chosen)
    assert chosen == sorted(chosen, key=lambda i: (i.t, i.camera))


def test_decode_at_picks_the_nearest_frames(annotated: Path) -> None:
    meta = load_dataset_meta(annotated)
    episode = meta.episodes[2]
    span = episode.videos["observation.images.top"]
    fps = meta.fps
    times = [span.from_timestamp_s + k / fps for k in (0, 3, episode.length - 1)]
    images = decode_at(span.path, [*times, times[1] + 0.3 / fps])
    first_in_file = round(span.from_timestamp_s * fps)
    for t, k in zip(times, (0, 3, episode.length - 1), strict=True):
        assert read_frame_code(np.asarray(images[t])) == (first_in_file + k, 2)
    assert read_frame_code(np.asarray(images[times[1] + 0.3 / fps]))[0] == first_in_file + 3


def test_page_is_self_contained(report_file: Path, annotated: Path) -> None:
    html = report_file.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    assert "Content-Security-Policy" in html and "img-src data:" in html
    external = re.findall(r'(?:src|href)="(?!data:|#)([^"]*)"', html)
    assert external == []
    assert "url(" not in html and "@import" not in html
    assert str(annotated) not in html  # no absolute local paths
    assert html.count('<details class="episode"') == EPISODES
    assert html.count("data:image/jpeg;base64,") >= EPISODES * 8
    assert "{{" not in html


def test_report_shows_validation_errors(annotated: Path, tmp_path: Path) -> None:
    broken = break_dataset(annotated, tmp_path / "bad", "vqa_shape")
    out = tmp_path / "bad.html"
    summary = build_report(broken, out, ReportOptions(max_episodes=2, thumbnails=2, max_vqa=1))
    assert summary.errors == 2 and summary.episodes_shown == 2
    html = out.read_text(encoding="utf-8")
    assert 'data-episode="0" data-errors="2"' in html
    assert "matches none of the answer shapes" in html
    assert f"{EPISODES} in the dataset" in html


def test_report_without_cameras(tmp_path: Path) -> None:
    root = make_annotated_dataset(tmp_path / "nocam", episodes=2, cameras=0)
    out = tmp_path / "nocam.html"
    summary = build_report(root, out)
    assert summary.episodes_shown == 2 and summary.errors == 0
    html = out.read_text(encoding="utf-8")
    assert "data:image/jpeg" not in html and "cameras: none" in html
    assert html.count('class="seg"') == 6


@pytest.mark.browser
def test_report_in_chromium(report_file: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium: apt-get install chromium"
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}") if msg.type == "error" else None
                ),
            )
            page.on("request", lambda req: requests.append(req.url))
            page.goto(report_file.as_uri())

            assert page.locator("#index tbody tr").count() == EPISODES
            assert page.locator("details.episode").count() == EPISODES
            assert page.locator("img").count() == 0  # nothing materialised before opening
            assert page.locator(".seg").count() == 0

            page.click('a.ep-link[href="#ep-1"]')
            section = page.locator("#ep-1")
            section.locator(".timeline").wait_for()
            assert section.evaluate("e => e.open") is True
            assert section.locator(".seg").count() == 3
            assert section.locator(".mk-interjection").count() == 1
            assert section.locator(".mk-speech").count() == 2
            assert section.locator(".strip img").count() == 8
            boxes = section.locator("rect.vqa-box").count()
            points = section.locator("circle.vqa-point").count()
            assert boxes + points > 0
            loaded = section.evaluate(
                "e => Array.from(e.querySelectorAll('img'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded is True
            box_geometry = _first_box_inside_its_image(page)
            assert box_geometry is None or box_geometry["inside"], box_geometry

            page.fill("#filter", "drawer")
            visible = page.locator("#index tbody tr:not([hidden])").count()
            assert page.locator("#shown-count").inner_text() == str(visible)
            assert visible < EPISODES
            page.fill("#filter", "")
            assert page.locator("#index tbody tr:not([hidden])").count() == EPISODES

            page.goto(report_file.as_uri() + "#ep-3")
            page.locator("#ep-3 .timeline").wait_for()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert (tmp_path / "report.png").stat().st_size > 10_000


def _first_box_inside_its_image(page: Any) -> dict[str, Any] | None:
    """Where the first drawn box lands relative to its thumbnail (None: no box drawn)."""
    result: dict[str, Any] | None = page.evaluate(
        """() => {
            const rect = document.querySelector('#ep-1 rect.vqa-box');
            if (!rect) return null;
            const img = rect.closest('.vqa-frame').querySelector('img');
            const r = rect.getBoundingClientRect(), i = img.getBoundingClientRect();
            return {inside: r.left >= i.left - 1 && r.right <= i.right + 1 &&
                            r.top >= i.top - 1 && r.bottom <= i.bottom + 1 && r.width > 0,
                    box: [r.left, r.top, r.right, r.bottom],
                    img: [i.left, i.top, i.right, i.bottom]};
        }"""
    )
    return result
