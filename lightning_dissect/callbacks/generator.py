"""``DissectionCallback``: periodic GAN dissection inside any Lightning training run.

The callback only schedules, resolves the generator and latents, and logs; every statistic comes
from :func:`lightning_dissect.dissection.dissect` (and, for the ablation check, from
:func:`lightning_dissect.interventions.ablation_check`). Generators are run through
:class:`~lightning_dissect.engine.runner.GeneratorRunner`, found by :mod:`lightning_dissect.engine.discovery`,
and rounds are written by :class:`~lightning_dissect.loggers.rounds.RoundLogger`.
"""

from __future__ import annotations

import json
import traceback
import warnings
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_dissect._utils.checks import check_choice, check_flag, check_int
from lightning_dissect._utils.distributed import OtherRankError, check_samples_per_rank, world
from lightning_dissect._utils.seeds import derive_seed
from lightning_dissect.callbacks.history import ROUND_FILES, RUN_SETTINGS, differing_settings, round_path, run_settings
from lightning_dissect.config import CALLBACK_DEFAULTS, DissectionConfig, config_defaults, merge_settings
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
from lightning_dissect.loggers import NOT_DELIVERED, RoundContent, deliver, finish, round_writers
from lightning_dissect.loggers.causal import causal_entry
from lightning_dissect.loggers.rounds import RoundLogger, round_entry
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter, check_segmenter
from lightning_dissect.visual.round_pictures import segmenter_palette

__all__ = ["DissectionCallback"]

_CONFIG_ARGUMENTS = ("num_samples", "batch_size", "threshold_mode", "quantile", "iou_threshold",
                     "num_visualized_units", "top_k", "seed")


def _check_name(name: Any) -> str | None:
    """``name`` names state keys, tags and a round folder: a plain folder name or ``None``."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string or None, got {name!r} ({type(name).__name__})")
    if not name or any(c in name for c in "/\\\0"):
        raise ValueError(
            "`name` must be a non-empty name without '/' or '\\' (it names the round folder "
            f"dissection-<name>/, read back by load_history(name=...)), got {name!r}"
        )
    return name


def callback_config(
    explicit: Mapping[str, Any], dissection_config: Mapping[str, Any] | None = None
) -> DissectionConfig:
    """The callback's :class:`DissectionConfig`: its defaults, then keyword arguments, then ``dissection_config``.

    ``explicit`` maps keyword arguments to their values (``None``: not given). A setting given in
    both places is an error, as is an unknown ``dissection_config`` key (see
    :func:`~lightning_dissect.config.merge_settings`).

    Examples:
        >>> callback_config({"num_samples": 256}).num_samples
        256
        >>> callback_config({"top_k": None}, {"top_k": 4}).top_k
        4
    """
    given = {k: v for k, v in explicit.items() if v is not None}
    return merge_settings(
        config_defaults(CALLBACK_DEFAULTS),
        ("the keyword arguments", given),
        ("`dissection_config`", dict(dissection_config or {})),
    )


class DissectionCallback(Callback):
    r"""Dissect generator layers every N epochs or steps and log what the units mean.

    Add it to ``Trainer(callbacks=[...])``; it finds the generator and the latent size by the usual
    names (``generator``/``G``/``netG``; ``hparams.latent_dim``/``latent_dim``/``nz``/``z_dim``) or
    by the callables you pass. At each round it dissects ``layers`` on a fixed, seeded latent bank
    (the same at every round, split across ranks under DDP), then global rank 0 logs it to every
    logger on the step axis of the LightningModule's own ``self.log`` calls (one step per batch,
    whatever the number of optimizers; ``trainer.global_step`` is kept in the round's metadata):

    * ``dissection/<layer>/top_units`` — Markdown table (unit, concept, category, IoU, IQR,
      threshold, chance IoU); row ``i`` is row ``i`` of the unit strips image;
    * ``dissection/<layer>/interpretable_units``, ``.../interpretable/<category>``,
      ``.../mean_best_iou``, ``.../concepts_covered`` — scalars;
    * ``dissection/<layer>/best_iou`` — histogram of each unit's label IoU;
    * ``dissection/<layer>/unit_strips`` and ``.../iou_heatmap`` — images;
    * ``dissection/<layer>/units_per_concept/<concept>`` — emergence (custom-scalars chart),
      ``.../churn/{gained,lost,relabelled}`` and the ``.../units_by_round`` picture;
    * ``dissection/<layer>/ablation/<concept>/{drop,relative_drop,control_drop,...}`` — the
      ablation check, when enabled;
    * every round's :class:`DissectionResult` as ``<log_dir>/dissection/round_<step>.json``
      (read them back with :func:`load_history`).

    ``WandbLogger``, ``MLFlowLogger`` and ``CSVLogger`` (and any logger with a folder) receive the
    same tables and pictures in their own form (``docs/loggers.md``); other loggers receive the
    scalars and one warning. Each of these sinks fails on its
    own, with a warning naming it: a computed round always reaches :attr:`history`. The history of
    rounds lives in the callback state (saved in checkpoints), so a resumed run continues its time
    series.

    Args:
        layers: Generator layer names (relative to the generator, as in its ``named_modules()``).
        segmenter: Images → concept labels; default: the embedded synthetic-world segmenter.
        every_n_epochs: Dissect after every ``n``-th training epoch. Default: every epoch, unless
            ``every_n_train_steps`` is set (set one schedule; ``0`` with no step schedule is an error).
        every_n_train_steps: Dissect every ``n`` global steps instead (checked after each batch).
        num_samples: Latents per round (the sample budget; cost is linear in it). Default 512.
        batch_size: Latents per generator call. Default 64.
        threshold_mode: ``"quantile"`` or ``"iqr"`` (see :class:`DissectionConfig`).
        quantile: Quantile level in ``"quantile"`` mode. Default 0.99.
        iou_threshold: Interpretability cut-off on the label IoU. Default 0.04.
        num_visualized_units: Units per layer whose image strips are logged (0: none). Default 8.
        top_k: Images per strip. Default 6.
        seed: Seed of the latent bank (private generator: the training RNG is untouched). Default 1.
        generator: Attribute path (``"G"``, ``"model.generator"``) or callable
            ``pl_module -> nn.Module``; default searches
            :data:`~lightning_dissect.engine.discovery.GENERATOR_ATTRIBUTES`.
        latent_shape: Shape of one latent; default from
            :data:`~lightning_dissect.engine.discovery.LATENT_DIM_ATTRIBUTES`, trying
            ``(d,)`` then ``(d, 1, 1)``.
        latent_sampler: Custom ``(n, torch.Generator) -> latents`` (overrides ``latent_shape``).
        generate: Custom ``(generator, latents) -> images``.
        selector: Picks the tensor from tuple/dict layer outputs.
        ablation_check: Run the ablation check at each round.
        ablation_top_n: Units switched off per concept (the paper: 20), capped by layer width.
        ablation_samples: Latents used by the ablation check.
        causal_concepts: Concepts whose causal unit sets are learned
            (:func:`~lightning_dissect.interventions.causal_units`); empty (the default): off.
        causal_every_n_rounds: Learn them at every ``n``-th round (the first round included).
        causal_layer: The layer (one of ``layers``; default the first); its round's IoU is the
            initial α and the ranking compared against.
        causal_samples: Latents α is learned on (the ablation check's source: the validation
            latents when they fit, else a seeded bank), split across ranks.
        causal_options: ``steps``, ``lr``, ``l2`` and ``sizes`` of ``causal_units``.
        on_error: ``"warn"`` (report the failed round with context and keep training) or
            ``"raise"``.
        name: Distinguishes several callbacks in one trainer (state keys, tags, folders).
        dissection_config: Further :class:`DissectionConfig` settings; a setting given both
            here and as a keyword argument is an error. Defaults not given anywhere are those of
            :data:`~lightning_dissect.config.CALLBACK_DEFAULTS` over :class:`DissectionConfig`.

    Examples:
        >>> from lightning_dissect.segmenters import SyntheticSceneSegmenter
        >>> callback = DissectionCallback(["layer2"], SyntheticSceneSegmenter(32), every_n_epochs=1)
        >>> callback.state_key
        "DissectionCallback{'layers': ('layer2',), 'name': None}"
    """

    def __init__(
        self,
        layers: Sequence[str],
        segmenter: Segmenter | None = None,
        *,
        every_n_epochs: int | None = None,
        every_n_train_steps: int | None = None,
        num_samples: int | None = None,
        batch_size: int | None = None,
        threshold_mode: str | None = None,
        quantile: float | None = None,
        iou_threshold: float | None = None,
        num_visualized_units: int | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        generator: str | Callable[[pl.LightningModule], nn.Module] | None = None,
        latent_shape: Sequence[int] | None = None,
        latent_sampler: LatentSampler | None = None,
        generate: Generate | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        ablation_check: bool = True,
        ablation_top_n: int = 20,
        ablation_samples: int = 64,
        causal_concepts: Sequence[str] = (),
        causal_every_n_rounds: int = 1,
        causal_layer: str | None = None,
        causal_samples: int = 64,
        causal_options: Mapping[str, Any] | None = None,
        on_error: str = "warn",
        name: str | None = None,
        dissection_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise ValueError("`layers` must name at least one generator layer")
        every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=0, optional=True)
        every_n_train_steps = check_int(every_n_train_steps, "every_n_train_steps", minimum=0, optional=True)
        if every_n_epochs is None and not every_n_train_steps:
            every_n_epochs = 1  # the default schedule; setting `every_n_train_steps` alone replaces it
        if not every_n_epochs and not every_n_train_steps:
            raise ValueError("set `every_n_epochs` or `every_n_train_steps`")
        if every_n_epochs and every_n_train_steps:
            raise ValueError("set only one of `every_n_epochs` and `every_n_train_steps`")
        on_error = check_choice(on_error, "on_error", ("warn", "raise"))
        ablation_check = check_flag(ablation_check, "ablation_check")
        ablation_top_n = check_int(ablation_top_n, "ablation_top_n", minimum=1)
        ablation_samples = check_int(ablation_samples, "ablation_samples", minimum=1)
        name = _check_name(name)
        causal_options = _check_causal(
            causal_concepts, causal_every_n_rounds, causal_layer, causal_samples, causal_options, layers
        )
        explicit = dict(
            zip(
                _CONFIG_ARGUMENTS,
                (num_samples, batch_size, threshold_mode, quantile, iou_threshold, num_visualized_units, top_k, seed),
            )
        )
        if segmenter is not None:
            self._check_segmenter(segmenter)
        if latent_sampler is not None and not callable(latent_sampler):
            raise TypeError(
                f"`latent_sampler` must be a callable (n, torch.Generator) -> latents, got {latent_sampler!r}"
            )
        if generate is not None and not callable(generate):
            raise TypeError(f"`generate` must be a callable (generator, latents) -> images, got {generate!r}")
        self.layers = list(layers)
        self.segmenter = segmenter
        self.every_n_epochs = every_n_epochs or None
        self.every_n_train_steps = every_n_train_steps or None
        self.config = callback_config(explicit, dissection_config)
        self.generator_getter = generator
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.latent_sampler = latent_sampler
        self.generate = generate
        self.selector = selector
        self.ablation_check = ablation_check
        self.ablation_top_n = ablation_top_n
        self.ablation_samples = ablation_samples
        self.causal_concepts = [causal_concepts] if isinstance(causal_concepts, str) else list(causal_concepts)
        self.causal_every_n_rounds = causal_every_n_rounds
        self.causal_layer = causal_layer or layers[0]
        self.causal_samples = causal_samples
        self.causal_options = causal_options
        self.last_causal: list[Any] = []
        self.on_error = on_error
        self.name = name
        self.history: list[dict[str, Any]] = []
        self.last_result: DissectionResult | None = None
        self.last_ablations: dict[str, list[Any]] = {}
        self._last_step: int = -1
        self._round_logger: RoundLogger | None = None
        self._warned_loggers: set[str] = set()

    def _check_segmenter(self, segmenter: Any) -> None:
        """Refuse what is not a segmenter now, not at the first round."""
        check_segmenter(segmenter)

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        """Identifies this callback's state in checkpoints (layers and ``name``)."""
        return self._generate_state_key(layers=tuple(self.layers), name=self.name)

    def state_dict(self) -> dict[str, Any]:
        """The round history: plain lists and numbers (loads with ``weights_only=True``)."""
        return {"history": json.loads(json.dumps(self.history)), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the round history of a resumed run."""
        self.history = list(state_dict.get("history", []))
        self._last_step = int(state_dict.get("last_step", -1))

    # ------------------------------------------------------------------ resolution
    def resolve_generator(self, pl_module: pl.LightningModule) -> nn.Module:
        """The generator module of ``pl_module`` (see the ``generator`` argument)."""
        try:
            module = find_generator(pl_module, self.generator_getter, argument="generator=")
        except ValueError as err:
            raise ValueError(f"DissectionCallback {err}") from err
        return unwrap_model(module)

    def _latent_candidates(self, pl_module: pl.LightningModule) -> list[tuple[int, ...]]:
        if self.latent_sampler is not None:
            return []
        if self.latent_shape is not None:
            return [self.latent_shape]
        dim = find_latent_dim(pl_module)
        if dim is None:
            raise ValueError(
                f"DissectionCallback could not find the latent size of {type(pl_module).__name__}: "
                f"looked for {', '.join(LATENT_DIM_ATTRIBUTES)} on hparams and on the module; pass "
                "`latent_shape=` or `latent_sampler=`"
            )
        return list(latent_shape_candidates(dim))

    def _runner(self, generator: nn.Module, batch_size: int | None = None) -> GeneratorRunner:
        return GeneratorRunner(
            generator, generate=self.generate, selector=self.selector,
            batch_size=batch_size or self.config.batch_size,
        )

    # ------------------------------------------------------------------ setup / dry run
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check that several dissection callbacks in one trainer have distinct names."""
        if stage != "fit":
            return
        others = [
            c for c in trainer.callbacks
            if isinstance(c, DissectionCallback) and c is not self and c.name == self.name
        ]
        if others:
            raise ValueError(
                "several DissectionCallbacks in one Trainer need distinct `name`s (they name the "
                f"TensorBoard tags and round folders); two have name={self.name!r}"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve generator, layers and latents and dry-run them before the first training step.

        Runs after ``LightningModule.setup``/``configure_model`` (so generators built there are
        found) and after the model was moved to its device.
        """
        # every rank gets at least one latent of each bank: found now, not at every round
        check_samples_per_rank(self.config.num_samples, "num_samples")
        if self.ablation_check:
            check_samples_per_rank(self.ablation_samples, "ablation_samples")
        if self.segmenter is None:
            from lightning_dissect.segmenters import SyntheticSceneSegmenter

            self.segmenter = SyntheticSceneSegmenter()
        if self.causal_concepts:
            from lightning_dissect.interventions._common import _concept_index
            from lightning_dissect.segmenters.base import concept_scores_of

            check_samples_per_rank(self.causal_samples, "causal_samples")
            concept_scores_of(self.segmenter)
            for concept in self.causal_concepts:
                _concept_index(concept, self.segmenter)
        runner = self._runner(self.resolve_generator(pl_module))
        runner.check_layers(self.layers)
        try:
            # with the ablation check (or causal sets) on, every layer must also take an edit
            # (selectors that cannot write back are refused now, not mid-training)
            editing = self.ablation_check or bool(self.causal_concepts)
            edits = {name: LayerEdit(alpha=0.0) for name in self.layers} if editing else None
            shape = runner.choose_latents(
                self.layers, self.segmenter, self._latent_candidates(pl_module), seed=self.config.seed,
                sampler=self.latent_sampler, edits=edits,
            )
        except DryRunError as err:
            raise DryRunError(f"DissectionCallback {err}") from err
        if shape is not None:
            self.latent_shape = shape
        self._round_logger = None  # built for this segmenter on first use
        if trainer is not None and trainer.is_global_zero:
            self._warn_on_foreign_rounds(trainer)

    def _warn_on_foreign_rounds(self, trainer: pl.Trainer) -> None:
        """Warn when the round folder already holds rounds dissected with other settings (another run).

        ``load_history`` would return both runs' rounds interleaved (e.g. under a pinned logger
        version); the warning names the folder and the settings that differ.
        """
        log_dir = _log_directory(trainer)
        if log_dir is None:
            return
        folder = round_path(log_dir, 0, self.name).parent
        files = sorted(folder.glob(ROUND_FILES)) if folder.is_dir() else []
        if not files:
            return
        try:
            old = run_settings(DissectionResult.from_json(files[-1]))
        except (OSError, ValueError):
            return  # an unreadable round is reported by load_history; nothing to compare here
        mine = {k: getattr(self.config, k) for k in RUN_SETTINGS if hasattr(self.config, k)}
        mine["layers"] = list(self.layers)
        differing = differing_settings(old, mine)
        if differing:
            listed = ", ".join(f"{k}: {old[k]!r} there, {mine[k]!r} now" for k in differing)
            rank_zero_warn(
                f"DissectionCallback: {str(folder)!r} already holds {len(files)} round(s) dissected with other "
                f"settings ({listed}); this run's rounds go into the same folder, and "
                "load_history(..., settings={...}) tells the runs apart. Use another logger version or `name` "
                "to keep them separate."
            )

    # ------------------------------------------------------------------ scheduling
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run a round every ``every_n_epochs`` epochs."""
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._round(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Run a round every ``every_n_train_steps`` global steps."""
        if not self.every_n_train_steps:
            return
        step = trainer.global_step
        if step > 0 and step // self.every_n_train_steps > max(self._last_step, 0) // self.every_n_train_steps:
            self._round(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the last round to the writers that take something at the end (MLflow: the HTML report)."""
        if not trainer.is_global_zero or self.last_result is None:
            return
        writers, _ = round_writers(trainer.loggers, round_dir=_log_directory(trainer))
        failures: list[str] = []
        result = self.last_result
        finish(result, self.round_logger.prefix, writers, lambda message: _add_failure(failures, result, message))

    # ------------------------------------------------------------------ one round
    def run_round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> DissectionResult | None:
        """Dissect now (all ranks must call it); returns the result, or None on a failure."""
        return self._round(trainer, pl_module)

    def _round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> DissectionResult | None:
        if trainer.sanity_checking:
            return None
        device = pl_module.device
        # nothing a round does (data loader iterators, generator noise) may move the training RNG
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return self._round_body(trainer, pl_module)

    def _round_body(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> DissectionResult | None:
        step = int(trainer.global_step)
        if step == self._last_step:
            return None
        self._last_step = step
        epoch = int(trainer.current_epoch)
        log_step = logging_step(trainer)
        try:
            result = self.dissect_now(
                trainer, pl_module, {"global_step": step, "log_step": log_step, "epoch": epoch, "name": self.name}
            )
            ablations: dict[str, list[Any]] = {}
            if self.ablation_check:
                try:
                    ablations = self._ablation(trainer, self.resolve_generator(pl_module), result)
                except Exception as err:  # noqa: BLE001 - the dissection itself is still logged
                    if self.on_error == "raise":
                        raise
                    rank_zero_warn(
                        f"DissectionCallback ablation check at global_step={step} failed "
                        f"({type(err).__name__}: {err}); logging the dissection without it"
                    )
            if ablations:
                result.ablations = {name: [r.to_dict() for r in records] for name, records in ablations.items()}
            causal = self._causal(trainer, pl_module, result) if self._causal_round() else []
        except Exception as err:  # noqa: BLE001 - never corrupt training; report with context
            context = (
                f"DissectionCallback round at global_step={step}, epoch={epoch}, "
                f"layers={self.layers} failed: {type(err).__name__}: {err}"
            )
            if self.on_error == "raise":
                raise RuntimeError(context) from err
            _warn_failure(context + "\n" + traceback.format_exc(limit=4), own=not isinstance(err, OtherRankError))
            return None
        # the round is computed: it reaches the history whatever happens to its sinks
        failures: list[str] = []
        content = self._content(result, ablations, log_step, failures, causal) if trainer.is_global_zero else None
        self.last_ablations = ablations
        self.last_causal = causal
        self.last_result = result
        entry = round_entry(result, step, epoch)
        if causal:
            entry["causal"] = causal_entry(causal)
        self.history.append(entry)
        if content is not None:
            self._write(trainer, content, failures)
        if failures and self.on_error == "raise":
            raise RuntimeError(
                f"DissectionCallback round at global_step={step} is kept in `history`, but writing it failed: "
                + "; ".join(failures)
            )
        return result

    def dissect_now(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, metadata: Mapping[str, Any]
    ) -> DissectionResult:
        """The dissection of one round (all ranks call it); the statistics of a round come from here only."""
        assert self.segmenter is not None, "setup() did not run"
        return dissect(
            self.resolve_generator(pl_module),
            self.layers,
            self.segmenter,
            latent_shape=self.latent_shape,
            latent_sampler=self.latent_sampler,
            generate=self.generate,
            selector=self.selector,
            config=self.config,
            metadata=metadata,
            dry_run=False,  # done once in on_fit_start
        )

    # ------------------------------------------------------------------ ablation
    def _ablation_latents(self, trainer: pl.Trainer, samples: int | None = None) -> Tensor:
        """Latents from the validation dataloader when it yields them, else a seeded bank."""
        wanted_samples = self.ablation_samples if samples is None else samples
        wanted = self.latent_shape
        loaders = getattr(trainer, "val_dataloaders", None)
        if wanted is not None and loaders is not None:
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            found: list[Tensor] = []
            total = 0
            try:
                for batch in loader:
                    z = batch[0] if isinstance(batch, (list, tuple)) else batch
                    if not isinstance(z, Tensor) or tuple(z.shape[1:]) != tuple(wanted):
                        break
                    found.append(z)
                    total += z.shape[0]
                    if total >= wanted_samples:
                        break
            except TypeError:
                found = []
            if found:
                return torch.cat(found)[: wanted_samples]
        rank, size = world()
        seed = derive_seed(self.config.seed, "ablation_latents")
        bank = LatentBank(wanted_samples, wanted, seed=seed, sampler=self.latent_sampler)
        return bank[shard_indices(len(bank), rank, size)]

    def _ablation(
        self, trainer: pl.Trainer, generator: nn.Module, result: DissectionResult
    ) -> dict[str, list[Any]]:
        from lightning_dissect.interventions import ablation_check

        latents = self._ablation_latents(trainer)
        # all layers in one pass: one unedited generator call per batch, controls shared
        return ablation_check(
            generator, result, self.segmenter, latents, top_n=self.ablation_top_n,
            generate=self.generate, selector=self.selector, batch_size=self.config.batch_size,
        )

    # ------------------------------------------------------------------ causal unit sets
    def _causal_round(self) -> bool:
        """Causal sets are learned at rounds 0, n, 2n, ... (counted in this run's history)."""
        return bool(self.causal_concepts) and len(self.history) % self.causal_every_n_rounds == 0

    def _causal(self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: DissectionResult) -> list[Any]:
        """The causal unit sets of this round; a concept that fails is warned about and left out."""
        from lightning_dissect.interventions import causal_units

        generator = self.resolve_generator(pl_module)
        latents = self._ablation_latents(trainer, self.causal_samples)
        found = []
        for concept in self.causal_concepts:
            try:
                found.append(causal_units(
                    generator, self.causal_layer, concept, self.segmenter, latents, result.layers[self.causal_layer],
                    generate=self.generate, selector=self.selector, batch_size=self.config.batch_size,
                    num_examples=0, **self.causal_options,
                ))  # fmt: skip
            except Exception as err:  # noqa: BLE001 - the dissection and the other concepts are still logged
                if self.on_error == "raise":
                    raise
                rank_zero_warn(
                    f"DissectionCallback causal units of {concept!r} at global_step={trainer.global_step} failed "
                    f"({type(err).__name__}: {err}); logging the round without them"
                )
        return found

    # ------------------------------------------------------------------ logging
    @property
    def round_logger(self) -> RoundLogger:
        """Tags, scalars and pictures of a round (the tag prefix follows ``name``)."""
        if self._round_logger is None:
            segmenter = self.segmenter
            self._round_logger = RoundLogger(
                self.name,
                categories=segmenter.vocabulary.categories if segmenter is not None else (),
                palette=segmenter_palette(segmenter),
                num_visualized_units=self.config.num_visualized_units,
            )
        return self._round_logger

    def _content(
        self,
        result: DissectionResult,
        ablations: Mapping[str, list[Any]],
        step: int,
        failures: list[str],
        causal: Sequence[Any] = (),
    ) -> RoundContent | None:
        """The round's content for every logger; on a failure to draw it, the scalars alone."""
        previous = self.history[-1] if self.history else None
        try:
            return self.round_logger.content(result, step, history=self.history, ablations=ablations, causal=causal)
        except Exception as err:  # noqa: BLE001 - a picture that cannot be drawn must not cost the round
            self._sink_failed(failures, result, "the round's tables and pictures", err)
        try:
            return RoundContent(self.round_logger.prefix, step, result,
                                scalars=self.round_logger.scalars(result, previous, ablations))
        except Exception as err:  # noqa: BLE001
            self._sink_failed(failures, result, "the round's scalars", err)
        return None

    def _sink_failed(self, failures: list[str], result: DissectionResult, what: str, err: BaseException) -> None:
        _add_failure(failures, result, f"could not write {what}: {type(err).__name__}: {err}")

    def _write(self, trainer: pl.Trainer, content: RoundContent, failures: list[str]) -> None:
        """Every sink on its own: the round file, each logger's scalars, each logger's writer."""
        result = content.result
        log_dir = _log_directory(trainer)
        if log_dir is not None:
            path = round_path(log_dir, int(result.metadata["global_step"]), self.name)
            try:
                result.to_json(path)  # atomic: a crash never leaves a half-written round
            except Exception as err:  # noqa: BLE001
                self._sink_failed(failures, result, f"the round file {path}", err)
        for logger in trainer.loggers:
            try:
                logger.log_metrics(content.scalars, step=content.step)
            except Exception as err:  # noqa: BLE001
                self._sink_failed(failures, result, f"the round's scalars to {type(logger).__name__}", err)
        writers, unsupported = round_writers(trainer.loggers, round_dir=log_dir)
        for logger in unsupported:
            kind = type(logger).__name__
            if kind not in self._warned_loggers:
                self._warned_loggers.add(kind)
                rank_zero_warn(
                    f"DissectionCallback: {kind} receives the dissection's scalars only, not its {NOT_DELIVERED}"
                )
        deliver(content, writers, lambda message: _add_failure(failures, result, message))


_CAUSAL_OPTIONS = ("steps", "lr", "l2", "sizes")


def _check_causal(
    concepts: Any, every: Any, layer: Any, samples: Any, options: Mapping[str, Any] | None, layers: Sequence[str]
) -> dict[str, Any]:
    """Check the causal-set arguments early (each error names its argument); return the options."""
    from lightning_dissect.interventions.causal import _check_settings

    if isinstance(concepts, str):
        concepts = [concepts]
    if not all(isinstance(c, str) and c for c in concepts):
        raise ValueError(f"`causal_concepts` must be concept names, got {concepts!r}")
    check_int(every, "causal_every_n_rounds", minimum=1)
    check_int(samples, "causal_samples", minimum=1)
    if layer is not None and layer not in layers:
        raise ValueError(f"`causal_layer` must be one of the dissected `layers` {list(layers)}, got {layer!r}")
    options = dict(options or {})
    unknown = sorted(set(options) - set(_CAUSAL_OPTIONS))
    if unknown:
        raise ValueError(f"`causal_options` takes {list(_CAUSAL_OPTIONS)}, got unknown keys {unknown}")
    _check_settings(options.get("steps", 8), options.get("lr", 0.1), options.get("l2", 0.005))
    return options


def _add_failure(failures: list[str], result: DissectionResult, message: str) -> None:
    failures.append(message)
    rank_zero_warn(
        f"DissectionCallback {message} (round at global_step={result.metadata.get('global_step')}; the round "
        "is kept in `history`, and the other loggers and files are unaffected)"
    )


def _warn_failure(message: str, *, own: bool) -> None:
    """Report a failed round: a rank's own error on that rank (tagged with it), the others' on rank 0.

    ``rank_zero_warn`` prints nothing on ranks > 0, so a rank that failed alone warns itself.
    """
    rank, size = world()
    if own and size > 1:
        warnings.warn(f"[rank {rank}] {message}", UserWarning, stacklevel=3)
    elif rank == 0:
        rank_zero_warn(message)


def logging_step(trainer: pl.Trainer) -> int:
    """The step the LightningModule's own ``self.log`` uses now, whatever the number of optimizers.

    Lightning files logged values under the number of batches that stepped the optimizers
    (``trainer.global_step`` counts optimizer steps: twice per batch with two optimizers under
    manual optimization). In ``on_train_epoch_end`` it files the epoch's values under the last
    batch's step, and so does this.
    """
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    batches = getattr(loop, "_batches_that_stepped", None)
    if not isinstance(batches, int):
        return int(trainer.global_step)
    progress = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None), "current", None)
    at_epoch_end = progress is not None and progress.processed > progress.completed  # epoch-end hooks run
    return max(batches - 1, 0) if at_epoch_end else batches


def _log_directory(trainer: pl.Trainer) -> str | None:
    """Where round JSON files go: the first logger's ``log_dir``, else the trainer's root dir."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return str(log_dir)
    return trainer.default_root_dir
