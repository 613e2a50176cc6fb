"""The dataset card (pure): a new card in LeRobot's shape, an existing card kept around
narrator's block, the block replaced (not stacked) on the next push."""

from __future__ import annotations

from typing import Any

import yaml

from narrator.hub.card import BEGIN, END, CardFacts, build_card, split_front_matter


def facts(**changes: Any) -> CardFacts:
    base: dict[str, Any] = {
        "repo_id": "someone/pick-place",
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "run_id": "3f9c2a1b7d4e",
        "generation": "aa11bb22cc33dd44",
        "narrator_version": "0.1.0",
        "codebase_version": "v3.0",
        "modules": ("plan", "vqa"),
        "module_hashes": {"plan": "1111222233334444", "vqa": "5555666677778888"},
        "prompts": {"plan.subtasks": ("abcdef0123456789", "shipped")},
        "request_options": {"temperature": 0.2, "max_tokens": 1024, "seed": 0,
                            "reasoning_effort": None},
        "settings": {"seed": 0, "vqa": {"vqa_hz": 0.5}},
        "episodes_total": 10,
        "episodes_annotated": 10,
        "rows_by_style": {"subtask": 30, "vqa": 40},
        "info": {"codebase_version": "v3.0", "fps": 10},
    }  # fmt: skip
    base.update(changes)
    return CardFacts(**base)


def test_a_new_card_has_lerobots_metadata_and_says_what_was_annotated() -> None:
    card = build_card(None, facts())
    meta, body = split_front_matter(card)
    assert meta["tags"] == ["LeRobot", "narrator", "language-annotations"]
    assert meta["task_categories"] == ["robotics"]
    assert meta["configs"] == [{"config_name": "default", "data_files": "data/*/*.parquet"}]
    assert body.startswith("# someone/pick-place\n")
    assert '"fps": 10' in body  # meta/info.json, as LeRobot's cards show it
    for fact in (
        "`Qwen/Qwen2.5-VL-7B-Instruct`",
        "all 10 episodes",
        "`plan`, `vqa`",
        "| `subtask` | 30 |",
        "| `plan.subtasks` | `abcdef0123456789` | shipped |",
        "`reasoning_effort` unset",
        "`temperature` 0.2",
        "Dataset format `v3.0`",
    ):
        assert fact in body, fact  # fmt: skip
    assert body.count(BEGIN) == 1 and body.count(END) == 1


def test_an_existing_card_is_kept_around_narrators_block() -> None:
    existing = (
        "---\nlicense: mit\ntags:\n- LeRobot\n- so100\nconfigs:\n- config_name: custom\n"
        "  data_files: data/chunk-000/*.parquet\n---\n\n# My dataset\n\nRecorded by hand.\n"
    )
    card = build_card(existing, facts(selection=("3", "7-9"), episodes_annotated=4))
    meta, body = split_front_matter(card)
    assert meta["license"] == "mit"
    assert meta["tags"] == ["LeRobot", "so100", "narrator", "language-annotations"]
    assert meta["configs"][0]["config_name"] == "custom"  # the user's configs stay
    assert body.startswith("\n# My dataset\n\nRecorded by hand.\n")
    assert "4 of 10 episodes (`--only-episodes 3,7-9`" in body

    again = build_card(card, facts(model="another/model"))
    assert again.count(BEGIN) == 1 and "`another/model`" in again
    assert "Qwen/Qwen2.5-VL-7B-Instruct" not in again
    assert build_card(again, facts(model="another/model")) == again  # stable


def test_a_card_without_valid_front_matter_keeps_its_text() -> None:
    text = "---\n: not yaml: [\n---\nbody\n"
    card = build_card(text, facts())
    meta, body = split_front_matter(card)
    assert meta["tags"][0] == "LeRobot"
    assert body.startswith(text)
    assert yaml.safe_load(card.split("---\n")[1])["task_categories"] == ["robotics"]
