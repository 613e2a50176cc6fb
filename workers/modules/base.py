"""What every module receives and returns.

A module is an async function ``run(ctx, client) -> ModuleOutput``. It builds prompts from
``ctx`` (pure), asks the VLM through ``client`` (anything satisfying
:class:`~narrator.workers.vlm_api.VLM`, passed in, so tests point it at the simulated
server), and turns answers into :class:`~common.staging.StagedRow` values placed on
episode-relative frame indices. It never touches Redis or the dataset files itself: frames
come from ``ctx.frame_source``.

Invariant: a failure of one item (one question, one memory) is recorded as a
:class:`~common.staging.Failure` and the rest goes on; only failures that make the whole
episode meaningless (no subtasks at all, undecodable video) raise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from narrator.common.config import AnnotationSettings
from narrator.common.prompts import PromptSet
from narrator.common.staging import Failure, ModuleResult, StagedRow
from narrator.workers.vlm_api import ChatRequest

if TYPE_CHECKING:
    from narrator.common.dataset.meta import CameraInfo, Episode, EpisodeFrames
    from narrator.workers.frames import EncodedFrame
    from narrator.workers.vlm_api import VLM


class FrameSource(Protocol):
    """Frames of the current episode, encoded for the VLM."""

    async def get(self, camera: str, frame_indices: Sequence[int]) -> list[EncodedFrame]:
        """JPEG data URLs of the given episode-relative frames of ``camera``, in order."""
        ...


@dataclass(frozen=True)
class EpisodeContext:
    run_id: str
    episode: Episode
    frames: EpisodeFrames
    task: str
    fps: float
    cameras: tuple[CameraInfo, ...]
    settings: AnnotationSettings
    prompts: PromptSet
    model: str
    frame_source: FrameSource
    upstream: Mapping[str, ModuleResult] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.frames.timestamp.shape[0])

    def time_of(self, frame: int) -> float:
        """The stored timestamp (seconds from episode start) of an episode-relative frame."""
        return float(self.frames.timestamp[frame])

    def seed_for(self, module: str, item: str = "") -> int:
        """A deterministic per-(run seed, episode, module, item) seed."""
        text = f"{self.settings.seed}:{self.episode.index}:{module}:{item}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")

    def chat_request(
        self,
        *,
        module: str,
        item: str,
        messages: list[dict[str, Any]],
        schema: dict[str, Any],
        schema_name: str,
        on_chain: bool = False,
    ) -> ChatRequest:
        """A request for ``item`` of ``module`` with the run's model and sampling settings
        (``on_chain``: later requests of the episode wait for this one; it may be hedged)."""
        settings = self.settings
        return ChatRequest(
            module=module,
            item=item,
            messages=messages,
            schema=schema,
            schema_name=schema_name,
            model=self.model,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            seed=self.seed_for(module, item),
            chat_template_kwargs=settings.chat_template_kwargs,
            reasoning_effort=settings.reasoning_effort,
            on_chain=on_chain,
        )


@dataclass
class ModuleOutput:
    rows: list[StagedRow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class ModuleRunner(Protocol):
    async def __call__(self, ctx: EpisodeContext, client: VLM) -> ModuleOutput: ...
