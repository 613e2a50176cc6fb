"""The project's recipe files (``tests/consumer/recipes/``, LeRobot's format) and the shipped
ones rendered over an annotated sample dataset (``tests/support/annotated_fixture.py``), each
checked against samples written from LeRobot's semantics and the fixture's known rows; the
per-frame inputs checked against what ``datasets`` decodes with LeRobot's features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta
from narrator.consumer.dataset_render import RenderRun, iter_samples, select_frames
from narrator.consumer.frames import read_episode_inputs
from narrator.consumer.recipes import TrainingRecipe, load_recipe
from tests.consumer.test_render import expected_component
from tests.support.annotated_fixture import SUBTASK_LABELS, make_annotated_dataset

RECIPES = Path(__file__).with_name("recipes")
TOP, WRIST = "observation.images.top", "observation.images.wrist"
PLAN_0 = "1. reach the object\n2. grasp it\n3. carry and release it"
PLAN_1 = "1. carry it slowly\n2. release it gently"
INTERJECTION = "Slowly please, it is fragile."


def say_call(text: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "say", "arguments": {"text": text}}}


@dataclass(frozen=True)
class Episode:
    """What the fixture wrote for one episode, read back with plain pyarrow."""

    index: int
    length: int
    global_index: list[int]
    timestamps: list[float]
    tasks: list[str]

    @property
    def starts(self) -> list[int]:
        return [0, self.length // 3, (2 * self.length) // 3]

    def subtask_at(self, frame: int) -> int:
        return max(i for i, s in enumerate(self.starts) if s <= frame)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetMeta, dict[int, Episode]]:
    root = make_annotated_dataset(tmp_path_factory.mktemp("render") / "ds", episodes=3)
    meta = load_dataset_meta(root)
    episodes: dict[int, Episode] = {}
    for path in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(path, columns=["episode_index", "index", "timestamp", "task_index"])
        for e in sorted(set(table["episode_index"].to_pylist())):
            rows = [r for r in table.to_pylist() if r["episode_index"] == e]
            episodes[e] = Episode(
                index=e,
                length=len(rows),
                global_index=[r["index"] for r in rows],
                timestamps=[float(np.float32(r["timestamp"])) for r in rows],
                tasks=[meta.tasks[r["task_index"]] for r in rows],
            )
    assert any(ep.global_index[0] != 0 for ep in episodes.values())  # index != position
    return meta, episodes


def render_all(meta: DatasetMeta, recipe: TrainingRecipe, **kw: Any) -> list[dict[str, Any]]:
    plan = select_frames(meta, sorted(meta.episodes), None, None)
    return list(iter_samples(meta, recipe, plan, **kw))


def by_frame(records: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    return {(r["episode"], r["frame"]): r for r in records}


def test_context_fields_are_the_frames_own(dataset: tuple[DatasetMeta, dict[int, Episode]]) -> None:
    meta, episodes = dataset
    records = render_all(meta, load_recipe(RECIPES / "flow_only.yaml"))
    assert len(records) == sum(ep.length for ep in episodes.values())  # subtask from frame 0
    for r in records:
        ep = episodes[r["episode"]]
        assert r["index"] == ep.global_index[r["frame"]]
        assert r["timestamp"] == ep.timestamps[r["frame"]]
        assert r["task"] == ep.tasks[r["frame"]]
        label = SUBTASK_LABELS[ep.subtask_at(r["frame"])]
        assert r["messages"] == [{"role": "user", "content": label}]
        assert r["message_streams"] == ["low_level"] and r["target_message_indices"] == []
        assert "component" not in r and "source" not in r


def test_joint_context(dataset: tuple[DatasetMeta, dict[int, Episode]]) -> None:
    meta, episodes = dataset
    got = by_frame(render_all(meta, load_recipe(RECIPES / "joint_context.yaml")))
    for ep in episodes.values():
        for frame in range(ep.length):
            k = ep.subtask_at(frame)
            plan = PLAN_1 if frame >= ep.starts[2] else PLAN_0
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": "You control a robot arm."},
                {"role": "user", "content": f"{ep.tasks[frame]}\nPlan: {plan}"},
            ]
            streams = ["high_level", "high_level"]
            if k > 0:
                messages.append({"role": "assistant", "content": f"Done: {SUBTASK_LABELS[k - 1]}"})
                streams.append("high_level")
            messages.append({"role": "assistant", "content": SUBTASK_LABELS[k]})
            streams.append("low_level")
            targets = [len(messages) - 1]
            if k < 2:
                after = SUBTASK_LABELS[k + 2] if k + 2 <= 2 else ""
                messages.append(
                    {"role": "assistant", "content": f"Then: {SUBTASK_LABELS[k + 1]} / {after}"}
                )
                streams.append("high_level")
                targets.append(len(messages) - 1)
            record = got[(ep.index, frame)]
            assert record["messages"] == messages, (ep.index, frame)
            assert record["message_streams"] == streams
            assert record["target_message_indices"] == targets


def test_speech_reply_tool_calls(dataset: tuple[DatasetMeta, dict[int, Episode]]) -> None:
    meta, episodes = dataset
    got = by_frame(render_all(meta, load_recipe(RECIPES / "speech_reply.yaml")))
    expected_frames = {(e, f) for e, ep in episodes.items() for f in (0, ep.starts[2])}
    assert set(got) == expected_frames
    for (e, frame), record in got.items():
        ep = episodes[e]
        tool = {"role": "tool", "content": "said [] / speech []"}
        if frame == 0:
            messages = [
                {"role": "user", "content": ep.tasks[0]},
                {"role": "assistant", "tool_calls": [say_call("Okay, starting now.")]},
                tool,
            ]
        else:
            messages = [
                {"role": "user", "content": ep.tasks[frame]},
                {"role": "user", "content": INTERJECTION},
                {"role": "assistant", "tool_calls": [say_call("Sure, slowly.")]},
                tool,
            ]
        assert record["messages"] == messages
        assert record["target_message_indices"] == [len(messages) - 2]


def test_memory_boundary_tolerance(dataset: tuple[DatasetMeta, dict[int, Episode]]) -> None:
    meta, episodes = dataset
    got = by_frame(render_all(meta, load_recipe(RECIPES / "memory_boundary.yaml")))
    memories = {1: "The gripper is at the object.", 2: "The object is held."}
    expected: set[tuple[int, int]] = set()
    for ep in episodes.values():
        for frame in range(ep.length):
            near = [
                k for k in (1, 2) if abs(ep.timestamps[ep.starts[k]] - ep.timestamps[frame]) <= 0.1
            ]
            if not near:
                continue
            expected.add((ep.index, frame))
            k = ep.subtask_at(frame)
            active = memories.get(k, "")
            prior = memories[1] if k == 2 else ""
            record = got[(ep.index, frame)]
            assert record["messages"] == [
                {
                    "role": "user",
                    "content": f"{ep.tasks[frame]} | prior: {prior} | active: {active}",
                },
                {"role": "assistant", "content": memories[near[0]]},
            ]
    assert set(got) == expected
    # At 10 fps the tolerance reaches one frame on one side only for these float32 values.
    assert any(f == episodes[e].starts[1] - 1 for e, f in got) or any(
        f == episodes[e].starts[1] + 1 for e, f in got
    )


def test_vqa_views_route_and_blend(dataset: tuple[DatasetMeta, dict[int, Episode]]) -> None:
    meta, episodes = dataset
    got = by_frame(render_all(meta, load_recipe(RECIPES / "vqa_views.yaml")))
    questions = read_vqa(meta)
    weights = [("describe", 9.0), ("ask_top", 1.0), ("ask_wrist", 3.0)]
    for ep in episodes.values():
        for frame in range(ep.length):
            idx = ep.global_index[frame]
            record = got.get((ep.index, frame))
            if (ep.index, frame) in questions:
                component = expected_component([("ask_top", 1.0), ("ask_wrist", 3.0)], f"vqa:{idx}")
                camera = TOP if component == "ask_top" else WRIST
                question, answer = questions[(ep.index, frame)][camera]
                image = {"type": "image", "feature": camera}
                if camera == WRIST:
                    image["note"] = f"asked {question}"
                assert record is not None and record["component"] == component
                assert record["messages"] == [
                    {"role": "user", "content": [image, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": answer},
                ]
                continue
            component = expected_component(weights, str(idx))
            if component == "describe":
                assert record is not None and record["component"] == "describe"
                label = SUBTASK_LABELS[ep.subtask_at(frame)]
                assert record["messages"][1] == {"role": "assistant", "content": label}
            else:
                assert record is None, (ep.index, frame)


def read_vqa(meta: DatasetMeta) -> dict[tuple[int, int], dict[str, tuple[str, str]]]:
    """(episode, frame) -> camera -> (question, answer), read with plain pyarrow."""
    out: dict[tuple[int, int], dict[str, tuple[str, str]]] = {}
    for path in sorted((meta.root / "data").rglob("*.parquet")):
        table = pq.read_table(path, columns=["episode_index", "language_events"]).to_pylist()
        position: dict[int, int] = {}
        for row in table:
            e = row["episode_index"]
            frame = position.get(e, 0)
            position[e] = frame + 1
            pairs: dict[str, dict[str, str]] = {}
            for event in row["language_events"]:
                if event["style"] == "vqa":
                    pairs.setdefault(event["camera"], {})[event["role"]] = event["content"]
            if pairs:
                out[(e, frame)] = {c: (v["user"], v["assistant"]) for c, v in pairs.items()}
    return out


def test_mixture_uses_the_frames_index(dataset: tuple[DatasetMeta, dict[int, Episode]]) -> None:
    meta, episodes = dataset
    got = by_frame(render_all(meta, load_recipe(RECIPES / "mixture.yaml")))
    weights = [("high", 0.5), ("low", 1.5), ("interjection_only", 2.0)]
    counts = {"high": 0, "low": 0, "interjection_only": 0}
    for ep in episodes.values():
        for frame in range(ep.length):
            component = expected_component(weights, str(ep.global_index[frame]))
            record = got.get((ep.index, frame))
            if component == "interjection_only" and frame != ep.starts[2]:
                assert record is None
                continue
            assert record is not None and record["component"] == component
            counts[component] += 1
    assert counts["high"] and counts["low"]


def test_fallback_shows_the_training_stream(
    dataset: tuple[DatasetMeta, dict[int, Episode]],
) -> None:
    meta, episodes = dataset
    run = RenderRun()
    records = render_all(meta, load_recipe(RECIPES / "mixture.yaml"), fallback=True, run=run)
    assert len(records) == sum(ep.length for ep in episodes.values())
    plain = by_frame(render_all(meta, load_recipe(RECIPES / "mixture.yaml")))
    for r in records:
        key = (r["episode"], r["frame"])
        if key in plain:
            assert r["source"] == "recipe" and r["messages"] == plain[key]["messages"]
        else:
            assert r["source"] == "fallback" and r["component"] == "interjection_only"
            assert r["messages"] == [{"role": "user", "content": r["task"]}]
            assert r["message_streams"] == ["low_level"] and r["target_message_indices"] == []
    assert run.sources == {"recipe": len(plain), "fallback": len(records) - len(plain)}


def test_shipped_recipes_over_the_fixture(
    dataset: tuple[DatasetMeta, dict[int, Episode]],
) -> None:
    meta, episodes = dataset
    ep = episodes[1]
    last = ep.starts[2]
    interjection = by_frame(render_all(meta, load_recipe("interjection_response")))
    assert set(interjection) == {(e, f) for e, x in episodes.items() for f in (0, x.starts[2])}
    assert interjection[(1, last)]["messages"] == [
        {"role": "user", "content": ep.tasks[last]},
        {"role": "assistant", "content": f"Plan: {PLAN_0}"},
        {"role": "user", "content": INTERJECTION},
        {"role": "assistant", "tool_calls": [say_call("Sure, slowly.")]},
        {"role": "assistant", "content": PLAN_1},
    ]
    assert interjection[(1, last)]["target_message_indices"] == [3, 4]
    assert interjection[(1, 0)]["messages"][1] == {
        "role": "assistant",
        "tool_calls": [say_call("Okay, starting now.")],
    }
    vqa = render_all(meta, load_recipe("vqa"))
    cameras = {r["messages"][0]["content"][0]["feature"] for r in vqa}
    assert cameras == {TOP, WRIST} and len(vqa) == len(read_vqa(meta))
    memory = by_frame(render_all(meta, load_recipe("memory_update")))
    assert (1, ep.starts[1]) in memory and (1, ep.starts[1] + 5) not in memory
    assert memory[(1, ep.starts[2])]["messages"][-1]["content"] == "The object is held."
    nxt = by_frame(render_all(meta, load_recipe("high_level_next_subtask")))
    assert nxt[(1, 0)]["messages"][-1]["content"] == SUBTASK_LABELS[1]
    assert (1, ep.length - 1) not in nxt  # the last subtask has no next one
    for name in ("low_level_subtask", "blend"):
        assert render_all(meta, load_recipe(name))


def test_frames_read_as_datasets_decodes_them_with_lerobots_features(
    dataset: tuple[DatasetMeta, dict[int, Episode]],
) -> None:
    import datasets
    import pyarrow as pa

    meta, _ = dataset
    data_file = meta.episode(1).data_file
    table = pq.read_table(meta.root / data_file)
    row = {
        "role": datasets.Value("string"),
        "content": datasets.Value("string"),
        "style": datasets.Value("string"),
        "timestamp": datasets.Value("float32"),
        "camera": datasets.Value("string"),
        "tool_calls": datasets.List(datasets.Json()),
    }
    features = datasets.Features(
        {
            **datasets.Features.from_arrow_schema(
                pa.schema([f for f in table.schema if not f.name.startswith("language_")])
            ),
            "language_persistent": datasets.List(row),
            "language_events": datasets.List({k: v for k, v in row.items() if k != "timestamp"}),
        }
    )
    ds = datasets.Dataset.from_parquet(
        str(meta.root / data_file),
        features=features,
        cache_dir=str(meta.root.parent / "hf"),
    )
    inputs = read_episode_inputs(meta, 1)
    items = [item for item in ds if item["episode_index"] == 1]
    assert len(items) == inputs.frames
    for frame, item in enumerate(items):
        assert inputs.persistent_rows(frame) == item["language_persistent"]
        assert inputs.event_rows(frame) == item["language_events"]
        assert inputs.t(frame) == item["timestamp"]
        assert int(inputs.index[frame]) == item["index"]
