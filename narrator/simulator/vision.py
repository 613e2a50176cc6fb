"""VQA answers read from the pixels of the image the simulated VLM receives (pure, cheap).

The sample scenes (:mod:`narrator.samples.scene`) show objects of distinct saturated colours.
:func:`find_objects` classifies the pixels of the received image (subsampled to at most
~128 columns) by their nearest object colour, groups them into 4-connected blobs, and returns
one :class:`Seen` per blob with its box in the received image's pixels (two blobs of one
colour side by side, split only by the arm passing in front, count as one object).
:func:`vqa_answer` then answers a VQA request (the ``{"question", "answer"}`` schema of
narrator's vqa module) about one of those objects: the question and the answer name the same
object, boxes and points lie on it, counts are the number of blobs of its colour, colours are
the colour seen, relations come from the blobs' centres.

Labels come from the scene of the task quoted in the prompt; for another task (a real
dataset) a blob is "<colour> object". No blob, or a schema that is not a VQA one: None, and
the server falls back to schema-driven answers.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from narrator.samples.scene import COLOURS, MAX_COLOUR_DISTANCE, MIN_SATURATION, scene_for_text

MAX_GRID_COLUMNS = 128
MIN_BLOB_SHARE = 0.002  # of the grid's cells; smaller blobs are compression noise
ARM_GAP_SHARE = 0.12  # of the image height: the widest gap the arm leaves across an object
ANSWER_KEYS = {
    "detections": "bbox",
    "point": "keypoint",
    "count": "count",
    "attribute": "attribute",
    "relation": "spatial",
}


@dataclass(frozen=True)
class Seen:
    label: str
    colour: str
    box: tuple[
        int, int, int, int
    ]  # x1, y1, x2, y2 in pixels of the received image (x2, y2 exclusive)

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


def classify_pixels(pixels: np.ndarray) -> np.ndarray:
    """Per pixel, the index into COLOURS of its object colour, or -1."""
    rgb = pixels.astype(np.int32)
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    palette = np.array(list(COLOURS.values()), dtype=np.int32)
    distance = np.sqrt(((rgb[:, :, None, :] - palette[None, None, :, :]) ** 2).sum(axis=3))
    nearest = distance.argmin(axis=2)
    ok = (saturation >= MIN_SATURATION) & (distance.min(axis=2) < MAX_COLOUR_DISTANCE)
    return np.where(ok, nearest, -1)


def _blobs(classes: np.ndarray) -> list[tuple[int, list[tuple[int, int]]]]:
    """4-connected groups of equal class: (class, [(row, column), ...])."""
    rows, cols = classes.shape
    seen = np.zeros_like(classes, dtype=bool)
    out = []
    for r0, c0 in zip(*np.nonzero(classes >= 0), strict=True):
        if seen[r0, c0]:
            continue
        kind = int(classes[r0, c0])
        stack, cells = [(int(r0), int(c0))], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                inside = 0 <= nr < rows and 0 <= nc < cols
                if inside and not seen[nr, nc] and classes[nr, nc] == kind:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        out.append((kind, cells))
    return out


def find_objects(pixels: np.ndarray, labels: dict[str, str] | None = None) -> list[Seen]:
    """The coloured objects of an RGB image, left to right (see the module docstring)."""
    height, width = pixels.shape[:2]
    step = max(1, -(-width // MAX_GRID_COLUMNS))
    grid = classify_pixels(pixels[::step, ::step])
    names = list(COLOURS)
    minimum = max(3, int(MIN_BLOB_SHARE * grid.size))
    found = []
    for kind, cells in _blobs(grid):
        if len(cells) < minimum:
            continue
        ys = [r for r, _ in cells]
        xs = [c for _, c in cells]
        box = (
            min(xs) * step,
            min(ys) * step,
            min(width, (max(xs) + 1) * step),
            min(height, (max(ys) + 1) * step),
        )
        colour = names[kind]
        label = (labels or {}).get(colour, f"{colour} object")
        found.append(Seen(label, colour, box))
    return sorted(_join_split(found, ARM_GAP_SHARE * height), key=lambda s: (s.box[0], s.box[1]))


def _join_split(found: list[Seen], gap_px: float) -> list[Seen]:
    """Join blobs of one colour that face each other across a narrow vertical gap."""
    items = list(found)
    joined = True
    while joined:
        joined = False
        for i, a in enumerate(items):
            for b in items[i + 1 :]:
                if a.colour != b.colour:
                    continue
                overlap = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
                height = min(a.box[3] - a.box[1], b.box[3] - b.box[1])
                gap = max(a.box[0], b.box[0]) - min(a.box[2], b.box[2])
                if overlap >= 0.6 * height and gap <= gap_px:
                    box = (
                        min(a.box[0], b.box[0]),
                        min(a.box[1], b.box[1]),
                        max(a.box[2], b.box[2]),
                        max(a.box[3], b.box[3]),
                    )
                    items = [x for x in items if x is not a and x is not b]
                    items.append(Seen(a.label, a.colour, box))
                    joined = True
                    break
            if joined:
                break
    return items


def _answer_type(schema: Any) -> str | None:
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or set(props) != {"question", "answer"}:
        return None
    answer = props["answer"]
    keys = answer.get("properties") if isinstance(answer, dict) else None
    if not isinstance(keys, dict):
        return None
    return next((kind for key, kind in ANSWER_KEYS.items() if key in keys), None)


def _plural(label: str) -> str:
    return label + ("es" if label.endswith(("x", "s", "ch")) else "s")


def _noun(label: str, colour: str) -> str:
    return label.removeprefix(colour + " ") or label


def _relation(a: Seen, b: Seen) -> str:
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(ax - bx) >= abs(ay - by):
        return "left_of" if ax < bx else "right_of"
    return "above" if ay < by else "below"


def vqa_answer(
    schema: Any, pixels: np.ndarray | None, rng: random.Random, text: str = ""
) -> dict[str, Any] | None:
    """A ``{"question", "answer"}`` object about the objects in ``pixels``, or None."""
    kind = _answer_type(schema)
    if kind is None or pixels is None:
        return None
    scene = scene_for_text(text)
    seen = find_objects(pixels, scene.labels() if scene else None)
    if not seen:
        return None
    by_label: dict[str, list[Seen]] = defaultdict(list)
    for item in seen:
        by_label[item.label].append(item)
    labels = sorted(by_label)
    label = rng.choice(labels)
    group = by_label[label]
    first = group[0]
    if kind == "bbox":
        boxes = group[:5]
        question = (
            f"Where is the {label}?" if len(boxes) == 1 else f"Where are the {_plural(label)}?"
        )
        answer: dict[str, Any] = {
            "detections": [
                {"label": label, "bbox_format": "xyxy", "bbox": list(s.box)} for s in boxes
            ]
        }
    elif kind == "keypoint":
        x, y = first.centre
        question = f"Point to the {label}."
        answer = {"label": label, "point_format": "xy", "point": [round(x), round(y)]}
    elif kind == "count":
        several = [name for name in labels if len(by_label[name]) > 1]
        if several and rng.random() < 0.7:
            label = rng.choice(several)
        question = f"How many {_plural(label)} are there?"
        answer = {"label": label, "count": len(by_label[label])}
    elif kind == "attribute":
        noun = _noun(label, first.colour)
        question = f"What colour is the {noun}?"
        answer = {"label": noun, "attribute": "colour", "value": first.colour}
    else:
        others = [name for name in labels if name != label]
        if not others:
            question = f"Where is the {label}?"
            answer = {"subject": label, "relation": "on", "object": "table"}
        else:
            other = rng.choice(others)
            question = f"Where is the {label} relative to the {other}?"
            relation = _relation(first, by_label[other][0])
            answer = {"subject": label, "relation": relation, "object": other}
    return {"question": question, "answer": answer}
