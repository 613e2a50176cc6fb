"""Which files ``--push-to-hub`` uploads (pure core and the listing): never narrator's state
or staging, nor hidden bookkeeping, nor the local README (the card replaces it)."""

from __future__ import annotations

from pathlib import Path

from narrator.hub.upload import inside, list_files, upload_paths


def test_hidden_trees_the_card_and_state_directories_stay_out() -> None:
    listing = [
        "meta/info.json",
        "meta/tasks.parquet",
        "data/chunk-000/file-000.parquet",
        "data/chunk-000/.file-000.parquet.tmp-123",
        "videos/observation.images.top/chunk-000/file-000.mp4",
        ".narrator/redis/appendonly.aof",
        ".narrator/staging/r1/g1/data/chunk-000/file-000.parquet",
        ".cache/huggingface/download/meta/info.json.metadata",
        "README.md",
        "docs/README.md",
        "state/logs/worker.log",
        "stateful/notes.txt",
    ]
    assert upload_paths(listing, ["state"]) == [
        "data/chunk-000/file-000.parquet",
        "docs/README.md",
        "meta/info.json",
        "meta/tasks.parquet",
        "stateful/notes.txt",
        "videos/observation.images.top/chunk-000/file-000.mp4",
    ]


def test_inside_and_the_listing(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text("{}")
    (root / ".narrator" / "logs").mkdir(parents=True)
    (root / ".narrator" / "logs" / "w.log").write_text("x")
    assert list_files(root) == ["meta/info.json"]
    assert inside(root, root / "state" / "staging") == "state/staging"
    assert inside(root, tmp_path / "elsewhere") is None
    assert inside(root, None) is None
