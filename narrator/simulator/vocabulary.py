"""Phrases of the simulated VLM: a small robot-manipulation vocabulary (pure).

Strings in simulated answers come from here, chosen by the property they fill, so they read
like a model's answers (labels are objects, ``utterance`` is something a robot says, steps and
subtask labels are imperative actions) and never like random letters. ``{o}`` in a template is
replaced by one of :data:`OBJECTS`, or, inside :func:`objects_in_view`, by one of the objects
the request's images show (the sample scene of the task its prompt names), so plans and
subtasks talk about the objects in the video.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

OBJECTS = (
    "red cube",
    "blue bowl",
    "sponge",
    "green block",
    "white mug",
    "cloth",
    "bottle",
    "plate",
    "drawer handle",
    "wooden spoon",
    "yellow cup",
    "banana",
    "box lid",
    "towel",
)
ACTIONS = (
    "grasp the {o} with the right gripper",
    "lift the {o} off the table",
    "move the {o} toward the bowl",
    "place the {o} in the bin",
    "push the {o} to the left",
    "open the gripper and release the {o}",
    "rotate the {o} upright",
    "pick up the {o} by its edge",
    "slide the {o} across the table",
    "reach above the {o}",
    "align the gripper with the {o}",
    "put the {o} on the plate",
)
SENTENCES = (
    "The {o} is now in the bin.",
    "Two objects are placed; the {o} is left.",
    "The gripper holds the {o}.",
    "The table is clear except for the {o}.",
    "The {o} was moved next to the bowl.",
)
UTTERANCES = (
    "Sure, I will take care of the {o}.",
    "Okay, moving the {o} now.",
    "Got it, the {o} goes first.",
    "On it.",
    "Alright, I'll put the {o} away.",
)
REQUESTS = (
    "Can you grab the {o} first?",
    "Please put the {o} in the bowl instead.",
    "Wait, move the {o} to the left.",
    "Could you hand me the {o}?",
)
QUESTIONS = (
    "Where is the {o}?",
    "How many objects are on the table?",
    "What colour is the {o}?",
    "Is the {o} left of the bowl?",
)
# A question that fits the answer shape asked for (keyed by a property only that shape has).
QUESTIONS_BY_ANSWER_KEY = {
    "detections": ("Where are the objects on the table?", "Find every {o} in the image."),
    "point": ("Point at the {o}.", "Where should the gripper touch the {o}?"),
    "count": ("How many objects are on the table?", "How many {o}s can you see?"),
    "attribute": ("What colour is the {o}?", "What is the {o} made of?"),
    "relation": ("Where is the {o} relative to the bowl?", "Is the {o} left of the plate?"),
}
ATTRIBUTES = ("color", "shape", "material", "size", "state")
VALUES = ("red", "blue", "round", "plastic", "small", "open", "closed", "wooden", "green")


_IN_VIEW: ContextVar[tuple[str, ...]] = ContextVar("simvlm_objects_in_view", default=())


@contextlib.contextmanager
def objects_in_view(objects: Sequence[str]) -> Iterator[None]:
    """Fill ``{o}`` (and object labels) from ``objects`` in this context, if any are given."""
    token = _IN_VIEW.set(tuple(objects))
    try:
        yield
    finally:
        _IN_VIEW.reset(token)


def an_object(rng: random.Random) -> str:
    return rng.choice(_IN_VIEW.get() or OBJECTS)


def fill(template: str, rng: random.Random) -> str:
    return template.format(o=an_object(rng))


def question_for_answer(answer_schema: object, rng: random.Random) -> str | None:
    """A question matching the answer object's shape, if the shape is a known VQA one."""
    props = answer_schema.get("properties") if isinstance(answer_schema, dict) else None
    if not isinstance(props, dict):
        return None
    for key, questions in QUESTIONS_BY_ANSWER_KEY.items():
        if key in props:
            return fill(rng.choice(questions), rng)
    return None


def leaf(path: str) -> str:
    """The last property name of a dotted path ("subtasks.label" -> "label"), lower-case."""
    return path.rsplit(".", 1)[-1].lower()


def phrase_for(path: str, rng: random.Random) -> str:
    """A short plausible string for the property at dotted ``path`` (e.g. "subtasks.label")."""
    key = leaf(path)
    in_plan = any(w in path.lower() for w in ("subtask", "step", "plan", "action", "rephras"))
    if in_plan and any(w in key for w in ("label", "name", "text", "step", "action", "rephras")):
        return fill(rng.choice(ACTIONS), rng)
    if any(w in key for w in ("label", "object", "subject", "name", "target", "item")):
        return an_object(rng)
    if "attribute" in key or key == "property":
        return rng.choice(ATTRIBUTES)
    if "value" in key or "colou" in key:
        return rng.choice(VALUES)
    if any(w in key for w in ("text", "speech", "utterance", "say", "response", "reply")):
        return fill(rng.choice(UTTERANCES), rng)
    if "interjection" in key or "request" in key or "instruction" in key:
        return fill(rng.choice(REQUESTS), rng)
    if "question" in key or "query" in key:
        return fill(rng.choice(QUESTIONS), rng)
    if any(w in key for w in ("memory", "summary", "note", "reason", "description", "state")):
        return fill(rng.choice(SENTENCES), rng)
    if "plan" in key:
        return f"1. {fill(rng.choice(ACTIONS), rng)}\n2. {fill(rng.choice(ACTIONS), rng)}"
    return fill(rng.choice(ACTIONS), rng)


def text_answer(rng: random.Random) -> str:
    """A short free-text answer for requests without a response format."""
    return fill(rng.choice(ACTIONS), rng).capitalize() + "."
