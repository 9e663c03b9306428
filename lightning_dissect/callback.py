"""``DissectionCallback``: periodic GAN dissection inside any Lightning training run.

The callback only schedules, resolves the generator and latents, and logs; every statistic comes
from :func:`lightning_dissect.dissection.dissect` (and, for the ablation check, from
:func:`lightning_dissect.interventions.ablation_check`).
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_dissect.dissection import (
    DissectionConfig,
    Generate,
    dissect,
    eval_mode,
    generate_images,
)
from lightning_dissect.hooks import OutputSelector, capture_layers, resolve_layer, unwrap_model
from lightning_dissect.latents import LatentBank, LatentSampler, shard_indices
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter, validate_images, validate_segmentation

__all__ = ["DissectionCallback", "load_history", "GENERATOR_ATTRIBUTES", "LATENT_DIM_ATTRIBUTES"]

#: Attribute names searched (in order) for the generator on the LightningModule.
GENERATOR_ATTRIBUTES = ("generator", "G", "netG", "gen", "net_g", "model.generator")
#: Attribute names searched (in order, on ``hparams`` then on the module) for the latent size.
LATENT_DIM_ATTRIBUTES = ("latent_dim", "nz", "z_dim", "zdim", "latent_size", "noise_dim")

ROUND_DIR = "dissection"


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def load_history(directory: str | Path) -> list[DissectionResult]:
    """Load every round a :class:`DissectionCallback` wrote under ``directory``, oldest first.

    ``directory`` may be the logger's directory (the rounds are in its ``dissection/``
    sub-directory) or that sub-directory itself. Results from different runs are comparable with
    :meth:`DissectionResult.compare`.
    """
    root = Path(directory)
    if (root / ROUND_DIR).is_dir():
        root = root / ROUND_DIR
    files = sorted(root.glob("round_*.json"))
    return [DissectionResult.from_json(f) for f in files]


class DissectionCallback(Callback):
    r"""Dissect generator layers every N epochs or steps and log what the units mean.

    Add it to ``Trainer(callbacks=[...])``; it finds the generator and the latent size by the usual
    names (``generator``/``G``/``netG``; ``hparams.latent_dim``/``latent_dim``/``nz``/``z_dim``) or
    by the callables you pass. At each round it dissects ``layers`` on a fixed, seeded latent bank
    (the same at every round, split across ranks under DDP), then global rank 0 logs under the
    ``trainer.global_step`` axis (with manual optimisation of two optimizers that axis advances
    twice per batch):

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

    Other loggers receive the scalars. The history of rounds lives in the callback state (saved in
    checkpoints), so a resumed run continues its time series.

    Args:
        layers: Generator layer names (relative to the generator, as in its ``named_modules()``).
        segmenter: Images → concept labels; default: the embedded synthetic-world segmenter.
        every_n_epochs: Dissect after every ``n``-th training epoch (``None``/0 to disable).
        every_n_train_steps: Dissect every ``n`` global steps instead (checked after each batch).
        num_samples: Latents per round (the sample budget; cost is linear in it).
        batch_size: Latents per generator call.
        threshold_mode: ``"quantile"`` or ``"iqr"`` (see :class:`DissectionConfig`).
        quantile: Quantile level in ``"quantile"`` mode.
        iou_threshold: Interpretability cut-off on the label IoU.
        num_visualized_units: Units per layer whose image strips are logged (0: none).
        top_k: Images per strip.
        seed: Seed of the latent bank (private generator: the training RNG is untouched).
        generator: Attribute path (``"G"``, ``"model.generator"``) or callable
            ``pl_module -> nn.Module``; default searches :data:`GENERATOR_ATTRIBUTES`.
        latent_shape: Shape of one latent; default from :data:`LATENT_DIM_ATTRIBUTES`, trying
            ``(d,)`` then ``(d, 1, 1)``.
        latent_sampler: Custom ``(n, torch.Generator) -> latents`` (overrides ``latent_shape``).
        generate: Custom ``(generator, latents) -> images``.
        selector: Picks the tensor from tuple/dict layer outputs.
        ablation_check: Run the ablation check at each round.
        ablation_top_n: Units switched off per concept (the paper: 20), capped by layer width.
        ablation_samples: Latents used by the ablation check.
        on_error: ``"warn"`` (report the failed round with context and keep training) or
            ``"raise"``.
        name: Distinguishes several callbacks in one trainer (state keys, tags, folders).
        dissection_config: Further :class:`DissectionConfig` settings.

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
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
        num_samples: int = 512,
        batch_size: int = 64,
        threshold_mode: str = "quantile",
        quantile: float = 0.99,
        iou_threshold: float = 0.04,
        num_visualized_units: int = 8,
        top_k: int = 6,
        seed: int = 1,
        generator: str | Callable[[pl.LightningModule], nn.Module] | None = None,
        latent_shape: Sequence[int] | None = None,
        latent_sampler: LatentSampler | None = None,
        generate: Generate | None = None,
        selector: OutputSelector | Mapping[str, OutputSelector] = None,
        ablation_check: bool = True,
        ablation_top_n: int = 20,
        ablation_samples: int = 64,
        on_error: str = "warn",
        name: str | None = None,
        dissection_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise ValueError("`layers` must name at least one generator layer")
        if not every_n_epochs and not every_n_train_steps:
            raise ValueError("set `every_n_epochs` or `every_n_train_steps`")
        if every_n_epochs and every_n_train_steps:
            raise ValueError("set only one of `every_n_epochs` and `every_n_train_steps`")
        for arg, value in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"`{arg}` must be a non-negative int or None, got {value!r}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"`on_error` must be 'warn' or 'raise', got {on_error!r}")
        if ablation_top_n < 1 or ablation_samples < 1:
            raise ValueError("`ablation_top_n` and `ablation_samples` must be positive")
        self.layers = list(layers)
        self.segmenter = segmenter
        self.every_n_epochs = every_n_epochs or None
        self.every_n_train_steps = every_n_train_steps or None
        self.config = DissectionConfig(
            **{
                "num_samples": num_samples,
                "batch_size": batch_size,
                "threshold_mode": threshold_mode,
                "quantile": quantile,
                "iou_threshold": iou_threshold,
                "num_visualized_units": num_visualized_units,
                "top_k": top_k,
                "seed": seed,
                "progress": False,
                **dict(dissection_config or {}),
            }
        ).validate()
        self.generator_getter = generator
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.latent_sampler = latent_sampler
        self.generate = generate
        self.selector = selector
        self.ablation_check = ablation_check
        self.ablation_top_n = ablation_top_n
        self.ablation_samples = ablation_samples
        self.on_error = on_error
        self.name = name
        self.history: list[dict[str, Any]] = []
        self.last_result: DissectionResult | None = None
        self.last_ablations: dict[str, list[Any]] = {}
        self._last_step: int = -1
        self._layout_written = False

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
        getter = self.generator_getter
        if callable(getter):
            module = getter(pl_module)
        else:
            candidates = (getter,) if getter else GENERATOR_ATTRIBUTES
            module = None
            for path in candidates:
                try:
                    module = _getattr_path(pl_module, path)
                except AttributeError:
                    continue
                if isinstance(module, nn.Module):
                    break
                module = None
            if module is None:
                raise ValueError(
                    f"DissectionCallback could not find the generator on "
                    f"{type(pl_module).__name__}: looked for attribute(s) "
                    f"{', '.join(repr(c) for c in candidates)}; pass `generator=` (an attribute "
                    "path or a callable pl_module -> nn.Module)"
                )
        if not isinstance(module, nn.Module):
            raise TypeError(f"`generator` resolved to {type(module).__name__}, not an nn.Module")
        return unwrap_model(module)

    def _latent_dim(self, pl_module: pl.LightningModule) -> int:
        hparams = getattr(pl_module, "hparams", {})
        for attr in LATENT_DIM_ATTRIBUTES:
            for source in (hparams, pl_module):
                value = source.get(attr) if isinstance(source, Mapping) else getattr(source, attr, None)
                if isinstance(value, int) and value > 0:
                    return value
        raise ValueError(
            f"DissectionCallback could not find the latent size of {type(pl_module).__name__}: "
            f"looked for {', '.join(LATENT_DIM_ATTRIBUTES)} on hparams and on the module; pass "
            "`latent_shape=` or `latent_sampler=`"
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
        from lightning_dissect._distributed import check_samples_per_rank

        if self.ablation_check:
            check_samples_per_rank(self.ablation_samples, "ablation_samples")
        if self.segmenter is None:
            from lightning_dissect.segmenters import SyntheticSceneSegmenter

            self.segmenter = SyntheticSceneSegmenter()
        generator = self.resolve_generator(pl_module)
        for name in self.layers:
            resolve_layer(generator, name)
        candidates: list[tuple[int, ...] | None]
        if self.latent_sampler is not None:
            candidates = [None]
        elif self.latent_shape is not None:
            candidates = [self.latent_shape]
        else:
            dim = self._latent_dim(pl_module)
            candidates = [(dim,), (dim, 1, 1)]
        errors = []
        device = pl_module.device
        for shape in candidates:
            try:
                # a generator drawing noise must not move the training RNG
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    self._dry_run(generator, shape)
            except Exception as err:  # noqa: BLE001 - reported below with every attempt
                errors.append((shape, err))
                continue
            if shape is not None:
                self.latent_shape = shape
            return
        shape, err = errors[-1]
        tried = " and ".join(str(s) for s, _ in errors)
        raise RuntimeError(
            f"DissectionCallback dry run failed before training (latent shape(s) tried: {tried}): "
            f"{type(err).__name__}: {err}"
        ) from err

    def _dry_run(self, generator: nn.Module, latent_shape: tuple[int, ...] | None) -> None:
        bank = LatentBank(2, latent_shape, seed=self.config.seed, sampler=self.latent_sampler)
        device = next((p.device for p in generator.parameters()), torch.device("cpu"))
        with torch.inference_mode(), eval_mode(generator):
            with capture_layers(generator, self.layers, self.selector) as captured:
                images = generate_images(generator, bank[[0, 1]].to(device), self.generate)
            for name in self.layers:
                if name not in captured:
                    raise RuntimeError(f"layer {name!r} did not run in the generator's forward")
                if captured[name].ndim != 4:
                    raise ValueError(
                        f"layer {name!r} output has shape {tuple(captured[name].shape)}; "
                        "dissection needs (B, U, h, w) feature maps"
                    )
            assert self.segmenter is not None
            validate_images(images, self.segmenter.value_range, name="generator output")
            labels = self.segmenter(images)
            validate_segmentation(labels, self.segmenter.vocabulary, batch_size=images.shape[0])

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

    def _round_body(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> DissectionResult | None:
        step = int(trainer.global_step)
        if step == self._last_step:
            return None
        self._last_step = step
        try:
            generator = self.resolve_generator(pl_module)
            assert self.segmenter is not None, "setup() did not run"
            result = dissect(
                generator,
                self.layers,
                self.segmenter,
                latent_shape=self.latent_shape,
                latent_sampler=self.latent_sampler,
                generate=self.generate,
                selector=self.selector,
                config=self.config,
                metadata={"global_step": step, "epoch": int(trainer.current_epoch), "name": self.name},
            )
            ablations: dict[str, list[Any]] = {}
            if self.ablation_check:
                try:
                    ablations = self._ablation(trainer, generator, result)
                except Exception as err:  # noqa: BLE001 - the dissection itself is still logged
                    if self.on_error == "raise":
                        raise
                    rank_zero_warn(
                        f"DissectionCallback ablation check at global_step={step} failed "
                        f"({type(err).__name__}: {err}); logging the dissection without it"
                    )
            self.last_ablations = ablations
            if trainer.is_global_zero:
                self._log(trainer, result, ablations, step)
        except Exception as err:  # noqa: BLE001 - never corrupt training; report with context
            context = (
                f"DissectionCallback round at global_step={step}, epoch={trainer.current_epoch}, "
                f"layers={self.layers} failed: {type(err).__name__}: {err}"
            )
            if self.on_error == "raise":
                raise RuntimeError(context) from err
            rank_zero_warn(context + "\n" + traceback.format_exc(limit=4))
            return None
        self.last_result = result
        self.history.append(self._history_entry(result, step, int(trainer.current_epoch), ablations))
        return result

    # ------------------------------------------------------------------ ablation
    def _ablation_latents(self, trainer: pl.Trainer, generator: nn.Module) -> Tensor:
        """Latents from the validation dataloader when it yields them, else a seeded bank."""
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
                    if total >= self.ablation_samples:
                        break
            except TypeError:
                found = []
            if found:
                return torch.cat(found)[: self.ablation_samples]
        rank, world = _rank_world()
        bank = LatentBank(
            self.ablation_samples, wanted, seed=self.config.seed + 1000, sampler=self.latent_sampler
        )
        return bank[shard_indices(len(bank), rank, world)]

    def _ablation(
        self, trainer: pl.Trainer, generator: nn.Module, result: DissectionResult
    ) -> dict[str, list[Any]]:
        from lightning_dissect.interventions import ablation_check

        latents = self._ablation_latents(trainer, generator)
        out = {}
        for name, layer in result.layers.items():
            out[name] = ablation_check(
                generator,
                layer,
                self.segmenter,
                latents,
                top_n=self.ablation_top_n,
                generate=self.generate,
                selector=self.selector,
                batch_size=self.config.batch_size,
            )
        return out

    # ------------------------------------------------------------------ history / logging
    def _history_entry(
        self, result: DissectionResult, step: int, epoch: int, ablations: Mapping[str, Any]
    ) -> dict[str, Any]:
        layers = {}
        for name, layer in result.layers.items():
            layers[name] = {
                "labels": [u.label if u.interpretable else "" for u in layer.units],
                "iou": [round(u.iou, 5) for u in layer.units],
                "num_interpretable": layer.num_interpretable,
            }
        return {"global_step": step, "epoch": epoch, "layers": layers}

    def _tag(self, layer: str, *parts: str) -> str:
        prefix = "dissection" if self.name is None else f"dissection-{self.name}"
        return "/".join([prefix, layer, *parts])

    def _log(
        self,
        trainer: pl.Trainer,
        result: DissectionResult,
        ablations: Mapping[str, list[Any]],
        step: int,
    ) -> None:
        from lightning_dissect import callback_logging as logging_

        previous = self.history[-1] if self.history else None
        scalars: dict[str, float] = {}
        for name, layer in result.layers.items():
            scalars.update(
                logging_.layer_scalars(self, name, layer, previous, ablations.get(name, []))
            )
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        writer = logging_.tensorboard_writer(trainer)
        if writer is not None:
            logging_.log_tensorboard(self, writer, result, ablations, step)
        log_dir = logging_.log_directory(trainer)
        if log_dir is not None:
            sub = ROUND_DIR if self.name is None else f"{ROUND_DIR}-{self.name}"
            result.to_json(Path(log_dir) / sub / f"round_{step:08d}.json")


def _rank_world() -> tuple[int, int]:
    from lightning_dissect.dissection import distributed_context

    return distributed_context()
