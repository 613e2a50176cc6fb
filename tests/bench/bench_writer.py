"""Writer: rewriting a data shard of >= 100k frames against a plain pyarrow read + write.

The shard is one generated data file (metadata-only dataset, ~850 episodes of 100-140 frames;
quick: ~170 episodes). It is measured in two row-group layouts: as generated (32-row groups,
the worst case for per-group overhead) and with 1000-row groups (what ``datasets`` writes).
Each measurement runs in a fresh Python process (``--child``) so its peak RSS is its own:

* ``rewrite``: what the writer does - its Arrow allocator
  (:func:`writer.shard.use_returning_memory_pool`), :func:`writer.shard.language_columns`
  (from per-episode rows prepared before the clock starts: 11 persistent rows and ~27 event
  rows per episode, like a real run) + :func:`writer.shard.write_language_shard`;
* ``plain``: ``pq.read_table`` + ``pq.write_table`` (same codec and group size, pyarrow's
  defaults otherwise) of the *source* shard - the baseline of the limits - and, for the
  reading of the figures, of the annotated shard the rewrite produced (the same bytes to
  write with no narrator code in between).

Limits, per layout: rewrite wall time <= 1.5 x the plain read + write of the source shard;
peak RSS of the rewrite above the child's baseline (taken after imports and a tiny warm-up
read + write) <= 2 x the source shard's in-memory (Arrow) size. The annotated shard holds
several times the source's data (each frame repeats its episode's persistent rows, as the
contract requires), so the figures against the annotated shard show how much of the time is
the writing of that data itself (the floor), and the note says which limit binds and why.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from narrator.common.contract import LanguageRow, say_tool_call
from tests.bench.report import main_for
from tests.bench.support import (
    BenchContext,
    BenchResult,
    current_rss_bytes,
    measure_in_fresh_process,
    median,
    peak_rss_bytes,
    sample_dataset,
)

NAME = "writer"
MODULE = "tests.bench.bench_writer"
LAYOUTS = {"as generated (32-row groups)": 0, "1000-row groups": 1000}
CAMERAS = ("observation.images.top", "observation.images.wrist")


# --- synthetic annotations (pure) -----------------------------------------------------------


def episode_rows(
    episode: int, timestamps: list[float]
) -> tuple[list[LanguageRow], dict[int, list[LanguageRow]]]:
    """Rows of one episode shaped like a real run's: subtasks, plan, memory, rephrasings, an
    interjection with its reply and plan, and vqa pairs per camera at 0.5 Hz."""
    n = len(timestamps)
    starts = [0, n // 4, n // 2, 3 * n // 4]
    persistent = [
        LanguageRow("assistant", f"grasp the sponge {episode}.{i} by its handle", "subtask",
                    timestamps[s], None, None)
        for i, s in enumerate(starts)
    ]  # fmt: skip
    persistent += [
        LanguageRow("assistant", f"remember: {i} bowls placed, {episode} left to wipe", "memory",
                    timestamps[s], None, None)
        for i, s in enumerate(starts[1:])
    ]  # fmt: skip
    steps = "1. reach the sponge\n2. grasp it\n3. wipe the table\n4. put it back"
    persistent.append(LanguageRow("assistant", steps, "plan", timestamps[0], None, None))
    persistent.append(LanguageRow("assistant", steps, "plan", timestamps[starts[2]], None, None))
    persistent += [
        LanguageRow("user", f"please wipe the table, version {i}", "task_aug", timestamps[0],
                    None, None)
        for i in range(2)
    ]  # fmt: skip
    persistent.sort(key=lambda r: (r.timestamp or 0.0, r.style or "", r.role))
    events: dict[int, list[LanguageRow]] = {
        0: [LanguageRow("assistant", None, None, None, None, (say_tool_call("On it."),))],
        starts[2]: [
            LanguageRow("assistant", None, None, None, None, (say_tool_call("Sure, doing it."),)),
            LanguageRow("user", "wipe the left side first", "interjection", None, None, None),
        ],
    }
    for frame in range(0, n, 20):
        rows = events.setdefault(frame, [])
        for camera in CAMERAS:
            answer = '{"detections":[{"label":"sponge","bbox_format":"xyxy","bbox":[1,2,30,40]}]}'
            rows.append(LanguageRow("user", "Where is the sponge?", "vqa", None, camera, None))
            rows.append(LanguageRow("assistant", answer, "vqa", None, camera, None))
    for frame, rows in events.items():
        rows.sort(key=lambda r: (r.style or "", r.role, r.camera or ""))
        events[frame] = rows
    return persistent, events


# --- the child: one measurement in a fresh process ------------------------------------------


def _warm_up(directory: Path) -> None:
    """Read and write a tiny parquet file, so pyarrow's one-time set-up (thread pools, memory
    pool arenas: ~90 MiB of RSS whatever the file) is in the baseline, not in the peak."""
    import pyarrow as pa

    tiny = directory / ".warm-up.parquet"
    pq.write_table(pa.table({"x": pa.array(range(10), type=pa.int64())}), tiny)
    pq.read_table(tiny)
    tiny.unlink()


def _child(mode: str, src: Path, dst: Path) -> dict[str, Any]:
    from narrator.writer.shard import (
        EpisodeRange,
        language_columns,
        use_returning_memory_pool,
        write_language_shard,
    )

    prepared: dict[str, Any] = {}
    if mode == "rewrite":
        frames = pq.read_table(src, columns=["episode_index", "timestamp"])
        episodes = frames.column("episode_index").to_numpy()
        stamps = frames.column("timestamp").to_numpy()
        ranges, persistent, events = [], {}, {}
        start = 0
        for i in range(1, len(episodes) + 1):
            if i == len(episodes) or episodes[i] != episodes[start]:
                ep = int(episodes[start])
                ranges.append(EpisodeRange(ep, start, i - start))
                persistent[ep], events[ep] = episode_rows(ep, [float(t) for t in stamps[start:i]])
                start = i
        prepared = {"n": len(episodes), "ranges": ranges, "p": persistent, "e": events}
        del frames
    if mode == "rewrite":
        use_returning_memory_pool()
    _warm_up(dst.parent)
    baseline = current_rss_bytes()
    started, cpu_started = time.perf_counter(), time.process_time()
    split: dict[str, float] = {}
    if mode == "plain":
        source = pq.ParquetFile(src)
        group_rows = source.metadata.row_group(0).num_rows
        codec = source.metadata.row_group(0).column(0).compression
        table = pq.read_table(src)
        pq.write_table(table, dst, row_group_size=group_rows, compression=codec.lower())
    else:
        columns = language_columns(prepared["n"], prepared["ranges"], prepared["p"], prepared["e"])
        split["build_s"] = time.perf_counter() - started
        write_language_shard(src, dst, columns)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "baseline_rss": baseline,
        "peak_rss": peak_rss_bytes(),
        **split,
    }


# --- the parent -------------------------------------------------------------------------------


def _shard_with_groups(source: Path, target: Path, group_rows: int) -> Path:
    if group_rows == 0:
        return source
    pq.write_table(pq.read_table(source), target, row_group_size=group_rows)
    return target


def _measure(mode: str, src: Path, dst: Path, repeats: int) -> list[dict[str, Any]]:
    runs = []
    for _ in range(repeats):
        dst.unlink(missing_ok=True)
        runs.append(measure_in_fresh_process(MODULE, [mode, str(src), str(dst)]))
    return runs


def bench(ctx: BenchContext) -> BenchResult:
    episodes = 170 if ctx.quick else 850
    repeats = 1 if ctx.quick else 3
    root = sample_dataset(
        ctx, episodes=episodes, episodes_per_file=episodes, metadata_only=True,
        min_length=100, max_length=140,
    )  # fmt: skip
    generated = next((root / "data").rglob("*.parquet"))
    work = ctx.scratch("writer")
    out = BenchResult()
    for label, group_rows in LAYOUTS.items():
        src = _shard_with_groups(generated, work / f"src-{group_rows}.parquet", group_rows)
        meta = pq.ParquetFile(src).metadata
        annotated = work / "rewrite.parquet"
        rewrite = _measure("rewrite", src, annotated, repeats)
        plain_out = _measure("plain", annotated, work / "plain-annotated.parquet", repeats)
        plain_src = _measure("plain", src, work / "plain-source.parquet", repeats)
        shard_bytes = pq.read_table(annotated).nbytes
        source_bytes = pq.read_table(src).nbytes
        wall = {k: median([r["seconds"] for r in v]) for k, v in
                (("rewrite", rewrite), ("plain", plain_out), ("source", plain_src))}  # fmt: skip
        cpu = {k: median([r["cpu_seconds"] for r in v]) for k, v in
               (("rewrite", rewrite), ("plain", plain_out), ("source", plain_src))}  # fmt: skip
        peak = max(r["peak_rss"] - r["baseline_rss"] for r in rewrite)
        plain_peak = max(r["peak_rss"] - r["baseline_rss"] for r in plain_src)
        peak_mib, source_mib = peak / 2**20, source_bytes / 2**20
        note = (
            f"{meta.num_rows:,} frames, {meta.num_row_groups} row groups, {episodes} episodes; "
            f"median of {repeats} fresh processes; CPU s: rewrite {cpu['rewrite']:.2f}, plain "
            f"source {cpu['source']:.2f}, plain annotated {cpu['plain']:.2f}"
        )
        out.add(NAME, f"{label}: rewrite (columns + write)", wall["rewrite"], "s", note=note)
        out.add(NAME, f"{label}: plain read+write of the source shard", wall["source"], "s")
        out.add(
            NAME, f"{label}: rewrite / plain (source)", wall["rewrite"] / wall["source"], "x",
            "<= 1.5", note=_binding_time(wall, shard_bytes / source_bytes),
        )  # fmt: skip
        out.add(NAME, f"{label}: same in CPU time", cpu["rewrite"] / cpu["source"], "x")
        out.add(
            NAME, f"{label}: rewrite / plain read+write of the annotated shard",
            wall["rewrite"] / wall["plain"], "x",
        )  # fmt: skip
        out.add(
            NAME,
            f"{label}: rewrite peak memory / source shard in memory",
            peak / source_bytes,
            "x",
            "<= 2.0",
            note=f"peak {peak_mib:.1f} MiB above the child's baseline; source shard "
            f"{source_mib:.1f} MiB in Arrow, annotated shard {shard_bytes / 2**20:.0f} MiB "
            f"({peak / shard_bytes:.2f} x of it)",
        )
        out.add(
            NAME,
            f"{label}: rewrite peak memory / plain read+write (source) peak",
            peak / max(plain_peak, 1),
            "x",
            note=f"a plain pyarrow read+write of the source shard peaks at "
            f"{plain_peak / 2**20:.1f} MiB = {plain_peak / source_bytes:.1f} x the source's "
            "Arrow size (row-group metadata, buffers): the 2 x limit is below what pyarrow "
            "itself needs for this shard",
        )
        out.details[label] = {
            "frames": meta.num_rows,
            "row_groups": meta.num_row_groups,
            "rewrite": rewrite,
            "plain_annotated": plain_out,
            "plain_source": plain_src,
            "shard_arrow_bytes_annotated": shard_bytes,
            "shard_arrow_bytes_source": source_bytes,
        }
    return out


def _binding_time(wall: dict[str, float], data_ratio: float) -> str:
    """Which part of the rewrite the time limit meets, worded for the note."""
    floor = wall["plain"] / wall["source"]
    return (
        f"the annotated shard holds {data_ratio:.1f} x the source's Arrow bytes; writing it "
        f"with plain pyarrow alone takes {floor:.2f} x the source's read+write, the rewrite "
        f"{wall['rewrite'] / wall['plain']:.2f} x that"
    )


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("mode", choices=["plain", "rewrite"])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args(argv)
    import json

    sys.stdout.write(json.dumps(_child(args.mode, args.src, args.dst)) + "\n")
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:
        sys.exit(_child_main(sys.argv[1:]))
    sys.exit(main_for(NAME, bench))
