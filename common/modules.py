"""The annotation modules and their job graph, declared once (pure data).

Everything that depends on *which* modules exist and how they depend on each other reads
this registry: config validation (``--modules``), the module hashes of a run
(:mod:`common.runs`), the producer (which jobs to enqueue and in what order), the workers
(which function runs a module, which results it reads, which jobs a finished job unblocks),
the staged-row check (which styles a module may emit) and the writer's row ownership (which
existing rows a run replaces).

A :class:`ModuleSpec` names:

* ``name``: the module; also the prefix of its prompt files (``common/prompts/<name>.*.txt``),
  the name of its settings section (``AnnotationSettings.<name>``, if it has settings) and a
  part of its job ids and Redis members (so ``[a-z_]+``);
* ``runner``: ``"package.module:function"`` of the async worker function that annotates one
  episode (resolved by the workers; ``common`` never imports it);
* ``needs``: modules whose staged result of the same episode it reads. Its hash covers their
  hashes, its job is enqueued by the last of their jobs to finish, and its result counts as
  done only while theirs do;
* ``emits``: the styles it may write, per column (``persistent`` / ``events``; ``None`` is a
  speech atom). A module owns the existing rows of these styles: a run that includes it
  replaces them;
* ``anchor``: for a style that several modules emit (``plan``), a row of it on a frame where
  this module's anchor style sits belongs to this module, elsewhere to the module without an
  anchor.

Adding a module (say ``motion``) is: one :class:`ModuleSpec` here, its module file under
``workers/modules/`` with the runner, and its prompt files; a settings section in
``AnnotationSettings`` only if it has settings.

Invariant: :data:`SPECS` is in dependency order (every module after the modules it needs),
checked at import.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

Styles = frozenset[str | None]


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    runner: str
    emits: Mapping[str, Styles]
    needs: tuple[str, ...] = ()
    anchor: str | None = None
    description: str = field(default="", compare=False)

    def owns(self, style: str | None) -> bool:
        return any(style in styles for styles in self.emits.values())


SPECS: tuple[ModuleSpec, ...] = (
    ModuleSpec(
        name="plan",
        runner="narrator.workers.modules.plan:run_plan",
        emits={"persistent": frozenset({"subtask", "plan", "memory", "task_aug"})},
        description="subtask spans, the plan, the memory chain and task rephrasings",
    ),
    ModuleSpec(
        name="interjections",
        runner="narrator.workers.modules.interjections:run_interjections",
        needs=("plan",),
        emits={
            "persistent": frozenset({"plan"}),
            "events": frozenset({"interjection", None}),
        },
        anchor="interjection",
        description="the spoken acknowledgement, interjections, their answers and plans",
    ),
    ModuleSpec(
        name="vqa",
        runner="narrator.workers.modules.vqa:run_vqa",
        emits={"events": frozenset({"vqa"})},
        description="questions and answers about the camera frames",
    ),
)

MODULES: tuple[str, ...] = tuple(s.name for s in SPECS)
_BY_NAME: dict[str, ModuleSpec] = {s.name: s for s in SPECS}


def _check_registry(specs: Iterable[ModuleSpec]) -> None:
    seen: set[str] = set()
    for s in specs:
        if not re.fullmatch(r"[a-z_]+", s.name) or s.name in seen:
            raise ValueError(f"module name {s.name!r} must be unique and match [a-z_]+")
        missing = [n for n in s.needs if n not in seen]
        if missing:
            raise ValueError(f"module {s.name} needs {missing}, which must be declared before it")
        seen.add(s.name)


_check_registry(SPECS)


def spec(name: str) -> ModuleSpec:
    """The spec of ``name``; ``KeyError`` names the known modules."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown module {name!r}; known: {', '.join(MODULES)}") from None


def selection_problem(selected: Collection[str]) -> str | None:
    """Why a set of modules cannot run together (unknown names, a needed module left out),
    or None when it can."""
    unknown = sorted(set(selected) - set(MODULES))
    if unknown:
        return f"unknown modules {unknown}; use {', '.join(MODULES)}"
    for name in MODULES:
        if name in selected:
            missing = [n for n in spec(name).needs if n not in selected]
            if missing:
                return f"the {name} module needs the {' and '.join(missing)} module"
    return None


def in_order(selected: Collection[str]) -> tuple[str, ...]:
    """``selected`` in dependency order (the registry's order)."""
    return tuple(n for n in MODULES if n in selected)


def dependents(name: str, within: Collection[str]) -> tuple[str, ...]:
    """The modules of ``within`` that need ``name`` directly, in registry order."""
    return tuple(n for n in in_order(within) if name in spec(n).needs)


def module_styles() -> dict[str, dict[str, Styles]]:
    """module -> column -> the styles it may emit there."""
    return {s.name: dict(s.emits) for s in SPECS}


def owner_of_style(style: str | None, *, anchors_here: Collection[str] = ()) -> str | None:
    """The module that owns a row of ``style`` (None: no narrator module, the row is always
    kept). ``anchors_here`` are the styles of the rows on the same frame / timestamp; they
    decide between modules that emit the same style (see ``ModuleSpec.anchor``)."""
    owners = [s for s in SPECS if s.owns(style)]
    if len(owners) <= 1:
        return owners[0].name if owners else None
    anchored = [s for s in owners if s.anchor is not None and s.anchor in anchors_here]
    if anchored:
        return anchored[0].name
    plain = [s for s in owners if s.anchor is None]
    return (plain or owners)[0].name
