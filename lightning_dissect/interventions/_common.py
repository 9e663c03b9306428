"""Shared pieces of the interventions: the public type aliases and small private validators."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from lightning_dissect.latents import LatentBank
from lightning_dissect.segmenters.base import Segmenter

Generate = Callable[[nn.Module, Tensor], Tensor]
"""``(generator, latents) -> images``; the default calls ``generator(latents)``."""


Latents = Tensor | LatentBank
"""This process's latents: a ``(N, ...)`` tensor or a
:class:`~lightning_dissect.latents.LatentBank`."""


Units = Sequence[int] | Tensor
"""Unit indices (a sequence or a long tensor) or a ``(U,)`` boolean mask."""


_NAN = float("nan")


def _as_tensor(latents: Latents) -> Tensor:
    if isinstance(latents, LatentBank):
        return latents.latents
    if not isinstance(latents, Tensor):
        raise TypeError(
            f"`latents` must be a Tensor or a LatentBank, got {type(latents).__name__}"
        )
    if latents.ndim < 1:
        raise ValueError("`latents` must have a batch dimension")
    return latents


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")


def _layer_output(captured: Mapping[str, Tensor], layer: str) -> Tensor:
    if layer not in captured:
        raise RuntimeError(f"layer {layer!r} did not run during the generator's forward pass")
    out = captured[layer]
    if out.ndim < 2:
        raise ValueError(f"layer {layer!r} output has shape {tuple(out.shape)}; need (B, U, ...)")
    return out


def _concept_index(concept: int | str, segmenter: Segmenter) -> int:
    vocabulary = segmenter.vocabulary
    if isinstance(concept, str):
        return vocabulary.index(concept)
    if isinstance(concept, bool) or not isinstance(concept, int):
        raise TypeError(f"`concept` must be a name or an index, got {concept!r}")
    if not 0 <= concept < vocabulary.num_concepts:
        raise ValueError(f"`concept` {concept} outside [0, {vocabulary.num_concepts})")
    return concept


def _control_seed(seed: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + int(salt) * 7_919 + 12_345) % (2**63 - 1)
