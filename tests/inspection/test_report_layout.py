"""The report's layout rules (pure): long task texts are shortened in episode headers, and
VQA box and point labels stay inside the image they annotate."""

from __future__ import annotations

import re

import pytest

from narrator.inspection.report.html import (
    LABEL_CHAR_WIDTH,
    TASK_HEADER_CHARS,
    EpisodeMedia,
    label_position,
    render_episode,
    shorten,
)
from narrator.inspection.report.model import Box, EpisodeView, Point, VqaItem


def view(task: str, vqa: tuple[VqaItem, ...] = ()) -> EpisodeView:
    return EpisodeView(
        episode=4, task=task, frames=30, duration_s=3.0, spans=(), markers=(), changes=(), vqa=vqa
    )


def test_shorten_marks_the_cut() -> None:
    assert shorten("open the drawer", 40) == "open the drawer"
    assert shorten("open the top drawer slowly", 10) == "open the\u2026"
    assert len(shorten("x" * 500, 90)) == 90


def test_a_long_task_is_shortened_in_the_episode_header_with_the_full_text_as_tooltip() -> None:
    task = "pick up " + "the very small red cube " * 30 + "and place it in the bowl"
    html = render_episode(view(task), EpisodeMedia(), {})
    summary = html.split("<summary>", 1)[1].split("</summary>", 1)[0]
    shown = re.search(r'">\u2014 (.*?) \u2014', summary)
    assert shown is not None and shown.group(1).endswith("\u2026")
    assert len(shown.group(1)) <= TASK_HEADER_CHARS
    assert f'title="{task}"' in summary
    assert task not in summary.replace(f'title="{task}"', "")


def test_a_short_task_is_shown_whole() -> None:
    html = render_episode(view("open the top drawer"), EpisodeMedia(), {})
    assert "\u2014 open the top drawer \u2014" in html


@pytest.mark.parametrize(
    ("anchor_x", "top", "bottom", "label"),
    [
        (0, 0, 10, "red cube"),  # box at the top edge: the label goes below it
        (90, 30, 40, "green block"),  # box at the right edge: the label moves left
        (10, 70, 72, "cyan bowl"),  # box at the bottom edge: the label stays above
        (5, 20, 30, "a label far longer than the whole image is wide"),
    ],
)
def test_labels_stay_inside_the_image(
    anchor_x: float, top: float, bottom: float, label: str
) -> None:
    width, height, font = 96, 72, 8
    x, y, text = label_position(anchor_x, top, bottom, label, font, width, height)
    assert x >= 0 and x + len(text) * font * LABEL_CHAR_WIDTH <= width + 1e-9
    assert font <= y <= height
    assert text == label or text.endswith("\u2026")


def test_svg_labels_are_inside_the_viewbox() -> None:
    item = VqaItem(
        frame=0,
        t=0.0,
        camera="observation.images.top",
        question="Where are the green blocks?",
        answer="{}",
        qtype="bbox",
        boxes=(Box("green block", 80, 0, 96, 12), Box("green block", 0, 60, 20, 72)),
        points=(Point("red cube", 94, 2),),
    )
    media = EpisodeMedia(vqa=((item, None),))
    html = render_episode(view("t", (item,)), media, {"observation.images.top": (96, 72)})
    font = max(8, 96 // 18)  # as the page sizes it
    for x, y, text in re.findall(
        r'<text class="vqa-label" x="([\d.]+)" y="([\d.]+)" [^>]*>([^<]*)<', html
    ):
        assert float(x) >= 0 and float(x) + len(text) * font * LABEL_CHAR_WIDTH <= 96 + 1e-6
        assert font <= float(y) <= 72
