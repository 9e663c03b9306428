"""``DissectionCallback``: periodic GAN dissection inside any Lightning training run.

Every statistic comes from :func:`lightning_dissect.dissection.dissect` (and, for the ablation
check and causal unit sets, from :mod:`lightning_dissect.interventions`); the schedule, the round
history and the sinks are :class:`~lightning_dissect.callbacks.base.BaseDissectionCallback`'s.
Generators are run through :class:`~lightning_dissect.engine.generator.GeneratorRunner` and found
by :mod:`lightning_dissect.engine.discovery`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_flag, check_int
from lightning_dissect._utils.distributed import check_samples_per_rank, world
from lightning_dissect._utils.seeds import derive_seed
from lightning_dissect.callbacks.base import BaseDissectionCallback, callback_config, legacy_settings
from lightning_dissect.config import DissectionConfig
from lightning_dissect.dissection import dissect
from lightning_dissect.engine.discovery import (
    LATENT_DIM_ATTRIBUTES,
    find_generator,
    find_latent_dim,
    latent_shape_candidates,
)
from lightning_dissect.engine.generator import Generate, GeneratorRunner
from lightning_dissect.engine.hooks import LayerEdit, OutputSelector, unwrap_model
from lightning_dissect.engine.latents import LatentBank, LatentSampler, shard_indices
from lightning_dissect.engine.runner import DryRunError
from lightning_dissect.interventions import ablation_check, causal_units
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter, check_segmenter

__all__ = ["AblationCheck", "CausalRounds", "DissectionCallback"]

#: The dissection settings that were keyword arguments of the callback (deprecated: use ``dissection_config``).
CONFIG_ARGUMENTS = ("num_samples", "batch_size", "threshold_mode", "quantile", "iou_threshold",
                    "num_visualized_units", "top_k", "seed")
_ABLATION_ARGUMENTS = ("ablation_check", "ablation_top_n", "ablation_samples")
_CAUSAL_ARGUMENTS = ("causal_concepts", "causal_every_n_rounds", "causal_layer", "causal_samples", "causal_options")
_CAUSAL_OPTIONS = ("steps", "lr", "l2", "sizes")


def _default(function: Callable[..., Any], parameter: str) -> Any:
    return inspect.signature(function).parameters[parameter].default


@dataclass(frozen=True)
class AblationCheck:
    """The ablation check of every round (:func:`~lightning_dissect.interventions.ablation_check`).

    Attributes:
        top_n: Units switched off per concept (the paper: 20), capped by the layer's width.
        samples: Latents it runs on: the validation latents when they fit, else a seeded bank.

    Examples:
        >>> AblationCheck(top_n=10).samples
        64
    """

    top_n: int = _default(ablation_check, "top_n")
    samples: int = 64


@dataclass(frozen=True)
class CausalRounds:
    """Causal unit sets learned at some rounds (:func:`~lightning_dissect.interventions.causal_units`).

    Attributes:
        concepts: Concepts whose causal unit sets are learned (none: off).
        every_n_rounds: Learn them at every ``n``-th round (the first round included).
        layer: The layer (one of the callback's ``layers``; default the first); its round's IoU is
            the initial α and the ranking compared against.
        samples: Latents α is learned on (the ablation check's source), split across ranks.
        steps: Adam steps of ``causal_units``.
        lr: Its learning rate.
        l2: Its L2 penalty on α.
        sizes: The set sizes it measures (``None``: its default).

    Examples:
        >>> CausalRounds(["tree"], every_n_rounds=5).steps
        8
    """

    concepts: Sequence[str] = ()
    every_n_rounds: int = 1
    layer: str | None = None
    samples: int = 64
    steps: int = _default(causal_units, "steps")
    lr: float = _default(causal_units, "lr")
    l2: float = _default(causal_units, "l2")
    sizes: Sequence[int] | None = _default(causal_units, "sizes")


class DissectionCallback(BaseDissectionCallback):
    r"""Dissect generator layers every N epochs or steps and log what the units mean.

    Add it to ``Trainer(callbacks=[...])``; it finds the generator and the latent size by the usual
    names (``generator``/``G``/``netG``; ``hparams.latent_dim``/``latent_dim``/``nz``/``z_dim``) or
    by the callables you pass. At each round it dissects ``layers`` on a fixed, seeded latent bank
    (the same at every round, split across ranks under DDP), then global rank 0 logs it to every
    logger on the step axis of the LightningModule's own ``self.log`` calls (one step per batch,
    whatever the number of optimizers; ``trainer.global_step`` is kept in the round's metadata).
    What is logged, and under which tags, is listed in ``docs/callback.md``; every round's
    :class:`DissectionResult` is also written as ``<log_dir>/dissection/round_<step>.json`` (read
    them back with :func:`~lightning_dissect.callbacks.history.load_history`). Each sink fails on its
    own, with a warning naming it: a computed round always reaches :attr:`history`, which lives in
    the callback state (saved in checkpoints), so a resumed run continues its time series.

    Args:
        layers: Generator layer names (relative to the generator, as in its ``named_modules()``).
        segmenter: Images → concept labels; default: the embedded synthetic-world segmenter.
        every_n_epochs: Dissect after every ``n``-th training epoch. Default: every epoch, unless
            ``every_n_train_steps`` is set (set one schedule; ``0`` with no step schedule is an error).
        every_n_train_steps: Dissect every ``n`` global steps instead (checked after each batch).
        generator: Attribute path (``"G"``, ``"model.generator"``) or callable
            ``pl_module -> nn.Module``; default searches
            :data:`~lightning_dissect.engine.discovery.GENERATOR_ATTRIBUTES`.
        latent_shape: Shape of one latent; default from
            :data:`~lightning_dissect.engine.discovery.LATENT_DIM_ATTRIBUTES`, trying
            ``(d,)`` then ``(d, 1, 1)``.
        latent_sampler: Custom ``(n, torch.Generator) -> latents`` (overrides ``latent_shape``).
        generate: Custom ``(generator, latents) -> images``.
        selector: Picks the tensor from tuple/dict layer outputs.
        ablation: The ablation check of every round: ``True`` (the default settings of
            :class:`AblationCheck`), an :class:`AblationCheck`, or ``False`` (off).
        causal: Causal unit sets (:class:`CausalRounds`); ``None`` (the default): off.
        on_error: ``"warn"`` (report the failed round with context and keep training) or
            ``"raise"``.
        name: Distinguishes several callbacks in one trainer (state keys, tags, folders).
        dissection_config: The :class:`DissectionConfig` settings of a round, as a mapping of
            fields (over :data:`~lightning_dissect.config.CALLBACK_DEFAULTS`: 512 samples, batch
            64, ...) or a whole :class:`DissectionConfig`.
        **deprecated: The keyword arguments of the previous release (``num_samples``, ``seed``,
            ... of :data:`CONFIG_ARGUMENTS`; ``ablation_check``, ``ablation_top_n``,
            ``ablation_samples``; ``causal_concepts``, ``causal_every_n_rounds``,
            ``causal_layer``, ``causal_samples``, ``causal_options``): still taken, with a
            ``DeprecationWarning``.

    Examples:
        >>> from lightning_dissect.segmenters import SyntheticSceneSegmenter
        >>> callback = DissectionCallback(["layer2"], SyntheticSceneSegmenter(32),
        ...                               dissection_config={"num_samples": 256},
        ...                               ablation=AblationCheck(top_n=10))
        >>> callback.config.num_samples, callback.ablation.top_n
        (256, 10)
    """

    def __init__(
        self,
        layers: Sequence[str],
        segmenter: Segmenter | None = None,
        *,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        generator: str | Callable[[pl.LightningModule], nn.Module] | None = None,
        latent_shape: Sequence[int] | None = None,
        latent_sampler: LatentSampler | None = None,
        generate: Generate | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        ablation: AblationCheck | bool = True,
        causal: CausalRounds | None = None,
        on_error: str = "warn",
        name: str | None = None,
        dissection_config: DissectionConfig | Mapping[str, Any] | None = None,
        **deprecated: Any,
    ) -> None:
        legacy = legacy_settings(
            type(self).__name__, deprecated, CONFIG_ARGUMENTS + _ABLATION_ARGUMENTS + _CAUSAL_ARGUMENTS,
            "dissection_config={...}, ablation=AblationCheck(...) and causal=CausalRounds(...)",
        )
        self._validate_init_configuration(segmenter, latent_sampler, generate)
        config = callback_config({k: legacy.pop(k) for k in CONFIG_ARGUMENTS if k in legacy}, dissection_config)
        super().__init__(
            layers, segmenter, every_n_epochs=every_n_epochs, every_n_train_steps=every_n_train_steps,
            config=config, on_error=on_error, name=name,
        )
        self.ablation = _ablation_option(ablation, {k: v for k, v in legacy.items() if k in _ABLATION_ARGUMENTS})
        self.causal = _causal_option(causal, {k: v for k, v in legacy.items() if k in _CAUSAL_ARGUMENTS}, self.layers)
        self.generator_getter = generator
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.latent_sampler = latent_sampler
        self.generate = generate
        self.selector = selector
        self.last_ablations: dict[str, list[Any]] = {}
        self.last_causal: list[Any] = []

    @staticmethod
    def _validate_init_configuration(segmenter: Any, latent_sampler: Any, generate: Any) -> None:
        """Refuse what cannot work now, not at the first round."""
        if segmenter is not None:
            check_segmenter(segmenter)
        if latent_sampler is not None and not callable(latent_sampler):
            raise TypeError(
                f"`latent_sampler` must be a callable (n, torch.Generator) -> latents, got {latent_sampler!r}"
            )
        if generate is not None and not callable(generate):
            raise TypeError(f"`generate` must be a callable (generator, latents) -> images, got {generate!r}")

    # ------------------------------------------------------------------ resolution
    def resolve_generator(self, pl_module: pl.LightningModule) -> nn.Module:
        """The generator module of ``pl_module`` (see the ``generator`` argument)."""
        try:
            module = find_generator(pl_module, self.generator_getter, argument="generator=")
        except ValueError as err:
            raise ValueError(f"{type(self).__name__} {err}") from err
        return unwrap_model(module)

    def _latent_candidates(self, pl_module: pl.LightningModule) -> list[tuple[int, ...]]:
        if self.latent_sampler is not None:
            return []
        if self.latent_shape is not None:
            return [self.latent_shape]
        dim = find_latent_dim(pl_module)
        if dim is None:
            raise ValueError(
                f"{type(self).__name__} could not find the latent size of {type(pl_module).__name__}: "
                f"looked for {', '.join(LATENT_DIM_ATTRIBUTES)} on hparams and on the module; pass "
                "`latent_shape=` or `latent_sampler=`"
            )
        return list(latent_shape_candidates(dim))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve generator, layers and latents and pre-flight them before the first training step.

        Runs after ``LightningModule.setup``/``configure_model`` (so generators built there are
        found) and after the model was moved to its device.
        """
        # every rank gets at least one latent of each bank: found now, not at every round
        check_samples_per_rank(self.config.num_samples, "num_samples")
        if self.ablation is not None:
            check_samples_per_rank(self.ablation.samples, "ablation_samples")
        segmenter = self._default_segmenter()
        if self.causal is not None:
            from lightning_dissect.interventions._common import _concept_index
            from lightning_dissect.segmenters.base import concept_scores_of

            check_samples_per_rank(self.causal.samples, "causal_samples")
            concept_scores_of(segmenter)
            for concept in self.causal.concepts:
                _concept_index(concept, segmenter)
        runner = GeneratorRunner(self.resolve_generator(pl_module), generate=self.generate, selector=self.selector,
                                 batch_size=self.config.batch_size)
        runner.check_layers(self.layers)
        # with the ablation check (or causal sets) on, every layer must also take an edit
        # (selectors that cannot write back are refused now, not mid-training)
        editing = self.ablation is not None or self.causal is not None
        try:
            shape = runner.choose_latents(
                self.layers, segmenter, self._latent_candidates(pl_module), seed=self.config.seed,
                sampler=self.latent_sampler, edits={n: LayerEdit(alpha=0.0) for n in self.layers} if editing else None,
            )
        except DryRunError as err:
            raise DryRunError(f"{type(self).__name__} {err}") from err
        if shape is not None:
            self.latent_shape = shape
        self._round_logger = None  # built for this segmenter on first use
        if trainer is not None and trainer.is_global_zero:
            self._warn_on_foreign_rounds(trainer)

    # ------------------------------------------------------------------ one round
    def dissect_now(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, metadata: Mapping[str, Any]
    ) -> DissectionResult:
        """The dissection of one round (all ranks call it); the statistics of a round come from here only."""
        assert self.segmenter is not None, "setup() did not run"
        return dissect(
            self.resolve_generator(pl_module), self.layers, self.segmenter, latent_shape=self.latent_shape,
            latent_sampler=self.latent_sampler, generate=self.generate, selector=self.selector, config=self.config,
            metadata=metadata, dry_run=False,  # done once in on_fit_start
        )

    def _interventions(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: DissectionResult
    ) -> tuple[dict[str, list[Any]], list[Any]]:
        """The ablation check and the causal unit sets of this round; a failing part is left out with a warning."""
        ablations: dict[str, list[Any]] = {}
        step = trainer.global_step
        if self.ablation is not None:
            latents = self._latents(trainer, self.ablation.samples)
            try:
                # all layers in one pass: one unedited generator call per batch, controls shared
                ablations = ablation_check(
                    self.resolve_generator(pl_module), result, self.segmenter, latents, top_n=self.ablation.top_n,
                    generate=self.generate, selector=self.selector, batch_size=self.config.batch_size,
                )
            except Exception as err:  # noqa: BLE001 - the dissection itself is still logged
                self._part_failed(f"ablation check at global_step={step} failed ({type(err).__name__}: {err}); "
                                  "logging the dissection without it", err)
        causal = self._causal(trainer, pl_module, result) if self._causal_round() else []
        self.last_ablations, self.last_causal = ablations, causal
        return ablations, causal

    def _latents(self, trainer: pl.Trainer, samples: int) -> Tensor:
        """Latents from the validation dataloader when it yields them, else a seeded bank (this rank's share)."""
        found = _validation_latents(trainer, self.latent_shape, samples)
        if found is not None:
            return found
        rank, size = world()
        seed = derive_seed(self.config.seed, "ablation_latents")
        bank = LatentBank(samples, self.latent_shape, seed=seed, sampler=self.latent_sampler)
        return bank[shard_indices(len(bank), rank, size)]

    def _causal_round(self) -> bool:
        """Causal sets are learned at rounds 0, n, 2n, ... (counted in this run's history)."""
        return self.causal is not None and len(self.history) % self.causal.every_n_rounds == 0

    def _causal(self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: DissectionResult) -> list[Any]:
        """The causal unit sets of this round; a concept that fails is warned about and left out."""
        causal = self.causal
        assert causal is not None and causal.layer is not None
        generator = self.resolve_generator(pl_module)
        latents = self._latents(trainer, causal.samples)
        found = []
        for concept in causal.concepts:
            try:
                found.append(causal_units(
                    generator, causal.layer, concept, self.segmenter, latents, result.layers[causal.layer],
                    generate=self.generate, selector=self.selector, batch_size=self.config.batch_size,
                    num_examples=0, steps=causal.steps, lr=causal.lr, l2=causal.l2, sizes=causal.sizes,
                ))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - the dissection and the other concepts are still logged
                self._part_failed(
                    f"causal units of {concept!r} at global_step={trainer.global_step} failed "
                    f"({type(err).__name__}: {err}); logging the round without them", err,
                )
        return found


def _validation_latents(trainer: pl.Trainer, shape: tuple[int, ...] | None, samples: int) -> Tensor | None:
    """Up to ``samples`` latents of the validation dataloader, when it yields latents of ``shape``."""
    loaders = getattr(trainer, "val_dataloaders", None)
    if shape is None or loaders is None:
        return None
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    found: list[Tensor] = []
    total = 0
    try:
        for batch in loader:
            z = batch[0] if isinstance(batch, (list, tuple)) else batch
            if not isinstance(z, Tensor) or tuple(z.shape[1:]) != tuple(shape):
                break
            found.append(z)
            total += z.shape[0]
            if total >= samples:
                break
    except TypeError:
        return None
    return torch.cat(found)[:samples] if found else None


def _ablation_option(ablation: Any, legacy: Mapping[str, Any]) -> AblationCheck | None:
    """The ablation check's settings (``None``: off), from ``ablation`` or the deprecated keyword arguments."""
    if legacy:
        if ablation is not True:
            raise ValueError("give `ablation` or the deprecated `ablation_*` keyword arguments, not both")
        on = check_flag(legacy.get("ablation_check", True), "ablation_check")
        default = AblationCheck()
        top_n = check_int(legacy.get("ablation_top_n", default.top_n), "ablation_top_n", minimum=1)
        samples = check_int(legacy.get("ablation_samples", default.samples), "ablation_samples", minimum=1)
        return AblationCheck(int(top_n or 0), int(samples or 0)) if on else None
    if isinstance(ablation, AblationCheck):
        top_n = check_int(ablation.top_n, "ablation.top_n", minimum=1)
        samples = check_int(ablation.samples, "ablation.samples", minimum=1)
        return AblationCheck(int(top_n or 0), int(samples or 0))
    return AblationCheck() if check_flag(ablation, "ablation") else None


def _causal_option(causal: Any, legacy: Mapping[str, Any], layers: Sequence[str]) -> CausalRounds | None:
    """The causal-set settings (``None``: off), checked early; each error names its argument."""
    from lightning_dissect.interventions.causal import _check_settings

    prefix = "causal."
    if legacy:
        if causal is not None:
            raise ValueError("give `causal` or the deprecated `causal_*` keyword arguments, not both")
        options = dict(legacy.get("causal_options") or {})
        unknown = sorted(set(options) - set(_CAUSAL_OPTIONS))
        if unknown:
            raise ValueError(f"`causal_options` takes {list(_CAUSAL_OPTIONS)}, got unknown keys {unknown}")
        given = {k[len("causal_"):]: v for k, v in legacy.items() if k != "causal_options"}
        causal, prefix = CausalRounds(**given, **options), "causal_"
    if causal is None:
        return None
    if not isinstance(causal, CausalRounds):
        raise TypeError(f"`causal` must be a CausalRounds or None, got {type(causal).__name__}")
    concepts = [causal.concepts] if isinstance(causal.concepts, str) else list(causal.concepts)
    if not all(isinstance(c, str) and c for c in concepts):
        raise ValueError(f"`{prefix}concepts` must be concept names, got {causal.concepts!r}")
    every = check_int(causal.every_n_rounds, f"{prefix}every_n_rounds", minimum=1)
    samples = check_int(causal.samples, f"{prefix}samples", minimum=1)
    if causal.layer is not None and causal.layer not in layers:
        raise ValueError(f"`{prefix}layer` must be one of the dissected `layers` {list(layers)}, got {causal.layer!r}")
    _check_settings(causal.steps, causal.lr, causal.l2)
    if not concepts:
        return None
    return replace(causal, concepts=tuple(concepts), every_n_rounds=every, samples=samples,
                   layer=causal.layer or layers[0])


#: Names this module's old path (``lightning_dissect.callback``) also gave, and where they live.
_MOVED = {
    "load_history": "lightning_dissect.callbacks.history",
    "GENERATOR_ATTRIBUTES": "lightning_dissect.engine.discovery",
    "LATENT_DIM_ATTRIBUTES": "lightning_dissect.engine.discovery",
    "callback_config": "lightning_dissect.callbacks.base",
    "logging_step": "lightning_dissect.callbacks.base",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # `from lightning_dissect.callback import load_history` keeps working for one release
        from lightning_dissect._utils.deprecation import moved_attribute

        return moved_attribute(f"{__name__}.{name}", _MOVED[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
