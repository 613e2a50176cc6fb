"""``narrator render`` as a user runs it (a real process): JSON lines and the pretty layout,
one-line errors with exit 2 for bad frames and recipes, the explanation when nothing renders,
the RenderMessagesStep fallback, and a light module import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from narrator.samples.dataset import make_sample_dataset
from tests.support.annotated_fixture import (
    make_annotated_dataset,
    read_language,
    write_language,
)
from tests.support.processes import REPO_ROOT

RECIPES = Path(__file__).with_name("recipes")
ONLY_INTERJECTION = """\
messages:
  - {role: user, content: "${interjection}", stream: high_level, if_present: interjection}
  - role: assistant
    stream: high_level
    target: true
    if_present: interjection
    tool_calls_from: speech
"""


def narrator(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narrator", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def messages_of(stderr: str) -> list[str]:
    """stderr without structured log lines (JSON objects)."""
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def interjection_frames(root: Path) -> dict[int, int]:
    found: dict[int, int] = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        rows = pq.read_table(path, columns=["episode_index", "frame_index", "language_events"])
        for row in rows.to_pylist():
            if any(e["style"] == "interjection" for e in row["language_events"]):
                found[row["episode_index"]] = row["frame_index"]
    return found


def episode_length(root: Path, episode: int) -> int:
    return sum(
        1
        for path in (root / "data").rglob("*.parquet")
        for e in pq.read_table(path, columns=["episode_index"])["episode_index"].to_pylist()
        if e == episode
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An annotated dataset whose episode 2 lost its interjection."""
    base = tmp_path_factory.mktemp("cli")
    root = make_annotated_dataset(base / "ds", episodes=4)
    for path in sorted((root / "data").rglob("*.parquet")):
        table, persistent, events = read_language(path)
        episodes = table["episode_index"].to_pylist()
        if 2 not in episodes:
            continue
        for i, episode in enumerate(episodes):
            if episode == 2:
                events[i] = [r for r in events[i] if r.style != "interjection"]
        write_language(path, table, persistent, events)
    (base / "only_interjection.yaml").write_text(ONLY_INTERJECTION, encoding="utf-8")
    assert set(interjection_frames(root)) == {0, 1, 3}
    return root


def test_jsonl_records(root: Path) -> None:
    out = narrator("render", root, "--recipe", RECIPES / "vqa_views.yaml", "--episode", "1")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert records
    for r in records:
        assert list(r) == [
            "episode",
            "frame",
            "index",
            "timestamp",
            "task",
            "component",
            "messages",
            "message_streams",
            "target_message_indices",
        ]
        assert r["episode"] == 1
    assert messages_of(out.stderr) == [
        f"{len(records)} sample(s) rendered from {episode_length(root, 1)} frame(s) with "
        f"{RECIPES / 'vqa_views.yaml'}"
    ]


def test_frames_beyond_the_episode_is_a_one_line_error(root: Path) -> None:
    length = episode_length(root, 1)
    out = narrator("render", root, "--recipe", "blend", "--episode", "1", "--frames", f"0,{length}")
    assert out.returncode == 2 and out.stdout == ""
    assert messages_of(out.stderr) == [
        f"narrator: --frames {length}: episode 1 has {length} frames (0-{length - 1})"
    ]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--frames", "a,b"], "--frames 'a,b': give comma-separated integers"),
        (["--frames", "-1"], "non-negative"),
        (["--every", "0"], "--every 0: give a step of at least 1"),
        (["--episode", "99"], "episode 99 is not in the episodes table"),
        (["--recipe", "nope"], "no recipe 'nope'"),
    ],
)
def test_bad_selection_is_a_one_line_error(root: Path, args: list[str], fragment: str) -> None:
    if "--recipe" not in args:
        args = ["--recipe", "blend", *args]
    out = narrator("render", root, *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = messages_of(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("narrator: ") and fragment in lines[0]


def test_a_recipe_lerobot_refuses_is_a_one_line_error(root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "named.yaml"
    bad.write_text("name: mine\n" + ONLY_INTERJECTION, encoding="utf-8")
    out = narrator("render", root, "--recipe", bad)
    assert out.returncode == 2
    assert messages_of(out.stderr) == [
        f"narrator: recipe {bad}: a recipe has unknown key(s) ['name']; LeRobot's recipe format "
        "allows only ['messages', 'bindings', 'blend', 'weight', 'route'] (put notes in YAML "
        "comments)"
    ]


def test_nothing_rendered_says_why(root: Path) -> None:
    recipe = root.parent / "only_interjection.yaml"
    frames = interjection_frames(root)
    out = narrator("render", root, "--recipe", recipe, "--episode", "2")
    assert out.returncode == 0 and out.stdout == ""
    lines = messages_of(out.stderr)
    n = lines[0].split()[4]
    assert lines == [
        f"0 sample(s) rendered from {n} frame(s) with {recipe}",
        f"nothing rendered from {n} selected frame(s) of episode(s) 2:",
        f"  on {n} frame(s) the recipe needs `interjection` = emitted_at(t, style=interjection), "
        "which matches no row there",
        "    episode 2 has no `interjection`",
        f"    episodes with one: 0 (frame {frames[0]}), 1 (frame {frames[1]}), "
        f"3 (frame {frames[3]})",
    ]
    # The episode has one, but not on the selected frames: say where it is.
    out = narrator("render", root, "--recipe", recipe, "--episode", "1", "--frames", "0,1")
    lines = messages_of(out.stderr)
    assert (
        f"    episode 1 has `interjection` only at frame(s) {frames[1]}; select them with --frames"
        in lines
    )
    out = narrator("render", root, "--recipe", recipe, "--episode", "1", "--frames", str(frames[1]))
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1


def test_a_camera_the_dataset_lacks_is_noted(root: Path, tmp_path: Path) -> None:
    text = (RECIPES / "vqa_views.yaml").read_text(encoding="utf-8")
    recipe = tmp_path / "front.yaml"
    recipe.write_text(text.replace("observation.images.top", "observation.images.front"))
    out = narrator("render", root, "--recipe", recipe, "--episode", "0", "--frames", "5")
    assert out.returncode == 0
    assert messages_of(out.stderr)[0] == (
        "note: component 'ask_top' names observation.images.front (binding `vqa`, binding "
        "`vqa_query`, an image block), which this dataset lacks (cameras: "
        "observation.images.top, observation.images.wrist)"
    )
    # Frame 5 has a pair on both cameras; only the wrist one can route now.
    record = json.loads(out.stdout)
    assert record["component"] == "ask_wrist"


def test_pretty_layout(root: Path) -> None:
    frame = interjection_frames(root)[0]
    out = narrator(
        "render",
        root,
        "--recipe",
        "interjection_response",
        "--episode",
        "0",
        "--frames",
        f"{frame}",
        "--format",
        "pretty",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"== episode 0 frame {frame} index ")
    assert "  user [high_level]: Slowly please, it is fragile." in lines
    assert '* assistant [high_level]: <tool_call say({"text":"Sure, slowly."})>' in lines
    assert "* assistant [high_level]: 1. carry it slowly" in lines


def test_unannotated_dataset_and_fallback(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "plain", episodes=2, metadata_only=True)
    args = ("render", root, "--recipe", "low_level_subtask", "--episode", "0", "--frames", "0,1")
    out = narrator(*args)
    assert out.returncode == 0 and out.stdout == ""
    lines = messages_of(out.stderr)
    assert lines == [
        "0 sample(s) rendered from 2 frame(s) with low_level_subtask",
        "nothing rendered from 2 selected frame(s) of episode(s) 0:",
        "  the dataset has no language columns; run `narrator annotate` first (or see "
        "LeRobot's task fallback with --fallback)",
    ]
    out = narrator(*args, "--fallback")
    assert out.returncode == 0
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["source"] for r in records] == ["fallback", "fallback"]
    assert records[0]["messages"] == [{"role": "user", "content": records[0]["task"]}]
    assert messages_of(out.stderr)[0] == "2 frame(s) through RenderMessagesStep: fallback 2"


def test_importing_the_command_loads_no_heavy_library() -> None:
    code = (
        "import sys, narrator.cli; before = set(sys.modules); import narrator.cli.cmd_render; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in "
        "{'pyarrow', 'av', 'aiohttp', 'redis', 'numpy', 'orjson', 'yaml', 'pydantic'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_episode_without_rows_through_the_fallback(root: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    for path in sorted((copy / "data").rglob("*.parquet")):
        table, persistent, events = read_language(path)
        episodes = table["episode_index"].to_pylist()
        keep = [e != 3 for e in episodes]
        persistent = [rows if k else [] for rows, k in zip(persistent, keep, strict=True)]
        events = [rows if k else [] for rows, k in zip(events, keep, strict=True)]
        write_language(path, table, persistent, events)
    out = narrator("render", copy, "--recipe", "blend", "--episode", "3", "--fallback")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    n = episode_length(copy, 3)
    assert len(records) == n and {r["source"] for r in records} == {"fallback"}
    assert messages_of(out.stderr) == [
        f"{n} frame(s) through RenderMessagesStep: fallback {n}",
        f"nothing rendered from {n} selected frame(s) of episode(s) 3:",
        "  the selected frames carry no language rows; LeRobot trains them on the task "
        "fallback (printed above)",
    ]


def test_help_lists_the_shipped_recipes() -> None:
    from narrator.cli.cmd_render import SHIPPED_DIR
    from narrator.consumer.recipes import SHIPPED_RECIPES_DIR, shipped_recipe_names

    assert SHIPPED_RECIPES_DIR.resolve() == SHIPPED_DIR
    out = narrator("render", "--help")
    assert out.returncode == 0
    assert ", ".join(shipped_recipe_names()) in " ".join(out.stdout.split())
