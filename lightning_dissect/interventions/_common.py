"""Shared pieces of the interventions: the public type aliases and small private validators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import torch
from torch import Tensor

from lightning_dissect._utils.seeds import derive_seed
from lightning_dissect.engine.generator import Generate, GeneratorRunner
from lightning_dissect.engine.hooks import OutputSelector
from lightning_dissect.engine.images import Labeller
from lightning_dissect.engine.latents import LatentBank
from lightning_dissect.engine.runner import ModuleRunner
from lightning_dissect.metrics._sync import all_reduce_sum

__all__ = [ "Latents", "Units", "TENSOR_LATENTS_SEED", "RunOptions", "InterventionOptions"]

Latents = Tensor | tuple | dict | LatentBank
"""This process's latents: a ``(N, ...)`` tensor, a tuple/dict of such tensors (structured
latents) or a :class:`~lightning_dissect.engine.latents.LatentBank`."""


Units = Sequence[int] | Tensor
"""Unit indices (a sequence or a long tensor) or a ``(U,)`` boolean mask."""

TENSOR_LATENTS_SEED = 0
"""Bank seed given to latents passed as a plain tensor (it seeds the generator noise per batch)."""

_NAN = float("nan")


class RunOptions(TypedDict, total=False):
    """How an intervention runs the generator: keyword options shared by every intervention.

    Attributes:
        batch_size: Latents per generator call (default 32).
        generate: Custom ``(generator, latents) -> images`` call (default ``generator(latents)``).
        selector: Picks the tensor of tuple/dict layer outputs: one for all layers, or a mapping
            ``layer -> selector`` (default ``None``: the output is a tensor).
        distributed: ``False`` runs on this process only, even inside an initialised process group:
            no collective is called and no metric is synced (default ``True``).
    """

    batch_size: int
    generate: Generate | None
    selector: OutputSelector | Mapping[str, OutputSelector]
    distributed: bool


class InterventionOptions(RunOptions, total=False):
    """:class:`RunOptions` and the random-units control of the effects.

    Attributes:
        control_seed: Seed of the private generator that draws the control units (default 0).
        num_controls: Random unit sets; their fractions are averaged (default 1; 0: no control).
    """

    control_seed: int
    num_controls: int


_RUN_DEFAULTS: dict[str, Any] = {"batch_size": 32, "generate": None, "selector": None, "distributed": True}
_CONTROL_DEFAULTS: dict[str, Any] = {**_RUN_DEFAULTS, "control_seed": 0, "num_controls": 1}


def _options(options: Mapping[str, Any], defaults: Mapping[str, Any], function: str) -> dict[str, Any]:
    """``options`` completed with ``defaults``; a keyword not among them raises ``TypeError``."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword arguments {unknown}; it takes {sorted(defaults)}")
    return {**defaults, **options}


def _runner(generator: Any, options: Mapping[str, Any]) -> GeneratorRunner:
    """The runner of an intervention from its completed :class:`RunOptions`."""
    return GeneratorRunner(generator, **{key: options[key] for key in _RUN_DEFAULTS})


def _as_bank(latents: Latents) -> LatentBank:
    """Return this process's latents as a bank (every latent of it is used; nothing is sharded)."""
    if isinstance(latents, LatentBank):
        return latents
    if not isinstance(latents, (Tensor, tuple, list, Mapping)):
        raise TypeError(
            f"`latents` must be a Tensor (or a tuple/dict of tensors) or a LatentBank, got {type(latents).__name__}"
        )
    if isinstance(latents, Tensor) and latents.ndim < 1:
        raise ValueError("`latents` must have a batch dimension")
    return LatentBank.from_latents(latents, TENSOR_LATENTS_SEED)


def _check_mode(mode: str) -> str:
    if mode not in ("zero", "mean"):
        raise ValueError(f"`mode` must be 'zero' or 'mean', got {mode!r}")
    return mode


def _concept_index(concept: int | str, segmenter: Labeller) -> int:
    """The concept's label index; an unknown name raises ``KeyError`` naming `concept` and the closest names."""
    vocabulary = segmenter.vocabulary
    if isinstance(concept, str):
        try:
            return vocabulary.index(concept)
        except KeyError as err:
            raise KeyError(f"`concept`: {err.args[0]}") from None
    if isinstance(concept, bool) or not isinstance(concept, int):
        raise TypeError(f"`concept` must be a name or an index, got {concept!r}")
    if not 0 <= concept < vocabulary.num_concepts:
        raise ValueError(f"`concept` {concept} outside [0, {vocabulary.num_concepts})")
    return concept


def _control_seed(seed: int, salt: int) -> int:
    return derive_seed(seed, "control", salt)


def _control_rng(seed: int, salt: int) -> torch.Generator:
    """The private generator of a control draw (the same on every rank and at every round)."""
    return torch.Generator().manual_seed(_control_seed(seed, salt))


def _sum_over_ranks(tensor: Tensor, runner: ModuleRunner[Any]) -> Tensor:
    """``tensor`` summed over the ranks of ``runner`` (itself for a local runner)."""
    return all_reduce_sum(tensor)[0] if runner.distributed else tensor.clone()


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else _NAN
