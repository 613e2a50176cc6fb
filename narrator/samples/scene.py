"""The sample world: per task, a few coloured objects on a table and what the arm does (pure).

Every sample task has a :class:`Scene`: objects of distinct, saturated colours (a colour
names one kind of object within a scene; several objects may share it, e.g. two green
blocks), one object the arm moves (from ``start`` to ``end``; the sponge goes and comes back),
and where the arm reaches. :func:`layout` says where every object is at a given progress of
the episode, in pixels of a frame of a given size; :mod:`narrator.samples.video` paints it and
the simulated VLM (:mod:`narrator.simulator.vision`) reads the colours back from the pixels it
receives, so its VQA answers are about the objects really in the image.

Invariants: the object colours are far from each other and from the unsaturated background,
arm and code band (:func:`nearest_colour` separates them after lossy compression); objects
that touch have colours whose blend is unsaturated (blue on yellow, red on cyan), so their
edges read as background, not as a third colour; object
positions are fractions of the table area (the frame below the code band, above the progress
bar), so scenes scale to any frame size; same inputs, same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 70, 215),
    "yellow": (235, 205, 25),
    "magenta": (200, 45, 190),
    "cyan": (30, 190, 205),
}
BACKGROUND: RGB = (118, 108, 98)  # a warm grey table
ARM: RGB = (170, 170, 176)
GRIPPER: RGB = (222, 222, 226)
PROGRESS_BAR: RGB = (205, 205, 205)
MIN_SATURATION = 70  # max(r, g, b) - min(r, g, b) of an object pixel after compression
MAX_COLOUR_DISTANCE = 95.0  # RGB distance to the nearest object colour


@dataclass(frozen=True)
class SceneObject:
    noun: str  # "cube"
    colour: str  # a key of COLOURS
    centre: tuple[float, float]  # (x, y) as fractions of the table area
    size: tuple[float, float]  # (width, height) as fractions of the table area's height

    @property
    def label(self) -> str:
        return f"{self.colour} {self.noun}"


@dataclass(frozen=True)
class Scene:
    task: str
    objects: tuple[SceneObject, ...]
    moved: int | None  # index of the object the arm moves, if any
    target: tuple[float, float]  # where the moved object ends (or where the arm presses)
    back_and_forth: bool = False  # the moved object returns to its start (wiping)

    def labels(self) -> dict[str, str]:
        """Colour -> label of the objects of that colour."""
        return {o.colour: o.label for o in self.objects}

    def in_view(self) -> tuple[str, ...]:
        """The scene's object labels, the moved one twice (it is what the episode is about)."""
        labels = [o.label for o in self.objects]
        if self.moved is not None:
            labels.insert(0, self.objects[self.moved].label)
        return tuple(labels)


SCENES: tuple[Scene, ...] = (
    Scene(
        task="pick up the red cube and place it in the bowl",
        objects=(
            SceneObject("bowl", "cyan", (0.75, 0.62), (0.55, 0.26)),
            SceneObject("cube", "red", (0.22, 0.6), (0.22, 0.22)),
            SceneObject("block", "green", (0.45, 0.3), (0.2, 0.2)),
            SceneObject("block", "green", (0.52, 0.82), (0.2, 0.2)),
        ),
        moved=1,
        target=(0.75, 0.58),
    ),
    Scene(
        task="open the top drawer",
        objects=(
            SceneObject("drawer", "yellow", (0.62, 0.42), (0.7, 0.4)),
            SceneObject("handle", "blue", (0.62, 0.42), (0.3, 0.12)),
            SceneObject("cube", "red", (0.15, 0.8), (0.2, 0.2)),
        ),
        moved=1,
        target=(0.62, 0.8),
    ),
    Scene(
        task="stack the blue block on the green block",
        objects=(
            SceneObject("block", "green", (0.72, 0.7), (0.26, 0.24)),
            SceneObject("block", "blue", (0.25, 0.7), (0.24, 0.22)),
            SceneObject("cube", "red", (0.48, 0.3), (0.2, 0.2)),
        ),
        moved=1,
        target=(0.72, 0.42),
    ),
    Scene(
        task="wipe the table with the sponge",
        objects=(
            SceneObject("sponge", "yellow", (0.2, 0.6), (0.34, 0.2)),
            SceneObject("bowl", "cyan", (0.82, 0.3), (0.4, 0.22)),
            SceneObject("cup", "magenta", (0.5, 0.28), (0.16, 0.26)),
        ),
        moved=0,
        target=(0.72, 0.68),
        back_and_forth=True,
    ),
    Scene(
        task="press the yellow button",
        objects=(
            SceneObject("button", "yellow", (0.55, 0.62), (0.2, 0.16)),
            SceneObject("block", "green", (0.15, 0.3), (0.2, 0.2)),
            SceneObject("block", "green", (0.85, 0.3), (0.2, 0.2)),
            SceneObject("block", "green", (0.85, 0.82), (0.2, 0.2)),
        ),
        moved=None,
        target=(0.55, 0.62),
    ),
)


def scene_for_task(task_index: int) -> Scene:
    return SCENES[task_index % len(SCENES)]


def scene_for_text(text: str) -> Scene | None:
    """The scene whose task is quoted in ``text`` (a prompt), if any."""
    lowered = text.lower()
    matches = [s for s in SCENES if s.task in lowered]
    return max(matches, key=lambda s: len(s.task)) if matches else None


@dataclass(frozen=True)
class Placed:
    """One object or arm part at one instant, in pixels: [x1, x2) x [y1, y2)."""

    label: str
    colour: RGB
    box: tuple[int, int, int, int]


def _ease(t: float) -> float:
    return t * t * (3 - 2 * t)


def _phase(progress: float, start: float, end: float) -> float:
    return _ease(min(1.0, max(0.0, (progress - start) / (end - start))))


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t


def layout(
    scene: Scene, width: int, height: int, top: int, bottom: int, progress: float
) -> list[Placed]:
    """What is where at ``progress`` (0..1), painted in list order (the arm last).

    The table area spans rows ``top``..``height - bottom``. The arm reaches the moved object
    (progress 0-0.3), carries it to the target (0.3-0.75; the sponge goes and comes back),
    then lifts away (0.75-1); with nothing to move it reaches the target and presses it.
    """
    area_h = max(1, height - top - bottom)

    def to_px(centre: tuple[float, float], size: tuple[float, float]) -> tuple[int, int, int, int]:
        w = max(2, round(size[0] * area_h))
        h = max(2, round(size[1] * area_h))
        cx = centre[0] * width
        cy = top + centre[1] * area_h
        x1 = min(max(0, round(cx - w / 2)), width - w)
        y1 = min(max(top, round(cy - h / 2)), height - bottom - h)
        return x1, y1, x1 + w, y1 + h

    home = (0.5, 0.05)
    reach = _phase(progress, 0.0, 0.3)
    carry = _phase(progress, 0.3, 0.75)
    leave = _phase(progress, 0.75, 1.0)
    placed: list[Placed] = []
    grip = home
    for index, obj in enumerate(scene.objects):
        centre = obj.centre
        if index == scene.moved:
            if scene.back_and_forth:
                swing = carry * 2 if carry <= 0.5 else 2 - carry * 2
                centre = _lerp(obj.centre, scene.target, swing)
            else:
                centre = _lerp(obj.centre, scene.target, carry)
        placed.append(Placed(obj.label, COLOURS[obj.colour], to_px(centre, obj.size)))
    anchor = scene.objects[scene.moved].centre if scene.moved is not None else scene.target
    if progress < 0.3:
        grip = _lerp(home, anchor, reach)
    elif progress < 0.75:
        grip = _lerp(anchor, scene.target, carry) if scene.moved is not None else scene.target
        if scene.moved is not None and scene.back_and_forth:
            grip = _lerp(anchor, scene.target, carry * 2 if carry <= 0.5 else 2 - carry * 2)
    else:
        rest = scene.target if not scene.back_and_forth else anchor
        grip = _lerp(rest, home, leave)
    gx1, gy1, gx2, gy2 = to_px((grip[0], grip[1] - 0.12), (0.3, 0.1))
    arm_w = max(2, (gx2 - gx1) // 3)
    ax1 = (gx1 + gx2) // 2 - arm_w // 2
    placed.append(Placed("arm", ARM, (ax1, top, ax1 + arm_w, max(top + 1, gy1))))
    placed.append(Placed("gripper", GRIPPER, (gx1, gy1, gx2, gy2)))
    return placed


def nearest_colour(rgb: tuple[float, float, float]) -> str | None:
    """The object colour ``rgb`` is (after compression), or None for background/arm/band."""
    r, g, b = rgb
    if max(r, g, b) - min(r, g, b) < MIN_SATURATION:
        return None
    best, best_d = None, MAX_COLOUR_DISTANCE
    for name, (cr, cg, cb) in COLOURS.items():
        d = ((r - cr) ** 2 + (g - cg) ** 2 + (b - cb) ** 2) ** 0.5
        if d < best_d:
            best, best_d = name, d
    return best
