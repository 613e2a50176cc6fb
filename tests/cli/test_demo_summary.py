"""``narrator demo``'s summary lists each VQA question before its answer."""

from __future__ import annotations

import re
from pathlib import Path

from narrator.cli.cmd_demo import summarise
from tests.support.annotated_fixture import make_annotated_dataset


def test_each_vqa_question_comes_before_its_answer(tmp_path: Path) -> None:
    root = make_annotated_dataset(tmp_path / "ds", episodes=2)
    text = summarise(root, "run-x")
    vqa = [
        (m.group(1), m.group(2), m.group(3))
        for m in re.finditer(r"frame\s+(\d+) vqa@(\S+)\s+(user|assistant):", text)
    ]
    assert vqa, text
    for index, (frame, camera, role) in enumerate(vqa):
        if role == "assistant":
            assert index > 0 and vqa[index - 1] == (frame, camera, "user"), text
