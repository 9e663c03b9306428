"""What every dissection callback shares: the schedule, the round, its history and its sinks.

:class:`BaseDissectionCallback` runs a round every ``n`` epochs or steps with the training RNG
isolated, keeps the round history in the callback state (saved in checkpoints), reports a failed
round with context instead of breaking training, and hands every computed round to each sink on
its own (the round file, each logger's scalars, each logger's writer). Its children say what a
round dissects: :class:`~lightning_dissect.callbacks.generator.DissectionCallback` a generator's
layers over a latent bank, :class:`~lightning_dissect.callbacks.reader.ImageDissectionCallback` a
reading network's layers over real images.
"""

from __future__ import annotations

import abc
import json
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_dissect._utils.checks import check_choice, check_int
from lightning_dissect._utils.distributed import OtherRankError, world
from lightning_dissect.callbacks.history import ROUND_FILES, RUN_SETTINGS, differing_settings, round_path, run_settings
from lightning_dissect.config import CALLBACK_DEFAULTS, DissectionConfig, config_defaults, merge_settings
from lightning_dissect.loggers import NOT_DELIVERED, RoundContent, deliver, finish, round_writers
from lightning_dissect.loggers.causal import causal_entry
from lightning_dissect.loggers.rounds import RoundLogger, round_entry
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter
from lightning_dissect.visual.round_pictures import segmenter_palette

__all__ = ["BaseDissectionCallback", "callback_config", "logging_step"]


def callback_config(
    explicit: Mapping[str, Any], dissection_config: DissectionConfig | Mapping[str, Any] | None = None
) -> DissectionConfig:
    """A callback's :class:`DissectionConfig`: its defaults, then keyword arguments, then ``dissection_config``.

    ``explicit`` maps keyword arguments to their values (``None``: not given). A setting given in
    both places is an error, as is an unknown ``dissection_config`` key (see
    :func:`~lightning_dissect.config.merge_settings`). A :class:`DissectionConfig` given as
    ``dissection_config`` is used as it is.

    Examples:
        >>> callback_config({"num_samples": 256}).num_samples
        256
        >>> callback_config({"top_k": None}, {"top_k": 4}).top_k
        4
    """
    given = {k: v for k, v in explicit.items() if v is not None}
    if isinstance(dissection_config, DissectionConfig):
        return merge_settings(dissection_config, ("the keyword arguments", given))
    return merge_settings(
        config_defaults(CALLBACK_DEFAULTS),
        ("the keyword arguments", given),
        ("`dissection_config`", dict(dissection_config or {})),
    )


def legacy_settings(
    owner: str, given: Mapping[str, Any], accepted: Sequence[str], replacement: str
) -> dict[str, Any]:
    """The deprecated keyword arguments in ``given`` (each warned about once); an unknown one is a ``TypeError``."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {unknown[0]!r}")
    if given:
        warnings.warn(
            f"{owner}({', '.join(f'{k}=' for k in given)}) is deprecated and will be removed in the next release; "
            f"use {replacement}",
            DeprecationWarning,
            stacklevel=3,
        )
    return dict(given)


class BaseDissectionCallback(Callback, abc.ABC):
    """The shared base of the dissection callbacks (see the module docs); a child defines :meth:`dissect_now`.

    Args:
        layers: Layer names of the dissected network.
        segmenter: Images → concept labels; ``None``: the embedded synthetic-world segmenter,
            chosen at ``on_fit_start``.
        every_n_epochs: Dissect after every ``n``-th training epoch (default: every epoch, unless
            ``every_n_train_steps`` is set).
        every_n_train_steps: Dissect every ``n`` global steps instead.
        config: The dissection settings of every round.
        on_error: ``"warn"`` (report a failed round and keep training) or ``"raise"``.
        name: Distinguishes several callbacks in one trainer (state keys, tags, folders).
    """

    def __init__(
        self,
        layers: Sequence[str],
        segmenter: Segmenter | None,
        *,
        every_n_epochs: int | None,
        every_n_train_steps: int | None,
        config: DissectionConfig,
        on_error: str,
        name: str | None,
    ) -> None:
        super().__init__()
        layers, every_n_epochs, every_n_train_steps = self._validate_schedule(
            layers, every_n_epochs, every_n_train_steps
        )
        self.layers = layers
        self.segmenter = segmenter
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.config = config
        self.on_error = check_choice(on_error, "on_error", ("warn", "raise"))
        self.name = _check_name(name)
        self.history: list[dict[str, Any]] = []
        self.last_result: DissectionResult | None = None
        self._last_step: int = -1
        self._round_logger: RoundLogger | None = None
        self._warned_loggers: set[str] = set()

    @staticmethod
    def _validate_schedule(
        layers: Sequence[str] | str, every_n_epochs: Any, every_n_train_steps: Any
    ) -> tuple[list[str], int | None, int | None]:
        """The layers as a list and the schedule (every epoch unless a step schedule is set)."""
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise ValueError("`layers` must name at least one layer")
        every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=0, optional=True)
        every_n_train_steps = check_int(every_n_train_steps, "every_n_train_steps", minimum=0, optional=True)
        if every_n_epochs is None and not every_n_train_steps:
            every_n_epochs = 1  # the default schedule; setting `every_n_train_steps` alone replaces it
        if not every_n_epochs and not every_n_train_steps:
            raise ValueError("set `every_n_epochs` or `every_n_train_steps`")
        if every_n_epochs and every_n_train_steps:
            raise ValueError("set only one of `every_n_epochs` and `every_n_train_steps`")
        return list(layers), every_n_epochs or None, every_n_train_steps or None

    # ------------------------------------------------------------------ what a child defines
    @abc.abstractmethod
    def dissect_now(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, metadata: Mapping[str, Any]
    ) -> DissectionResult:
        """The dissection of one round (all ranks call it); the statistics of a round come from here only."""

    def _interventions(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, result: DissectionResult
    ) -> tuple[dict[str, list[Any]], list[Any]]:
        """What a round measures besides the dissection: ``(ablation records per layer, causal unit sets)``."""
        return {}, []

    # ------------------------------------------------------------------ state
    @property
    def state_key(self) -> str:
        """Identifies this callback's state in checkpoints (its class, layers and ``name``)."""
        return self._generate_state_key(layers=tuple(self.layers), name=self.name)

    def state_dict(self) -> dict[str, Any]:
        """The round history: plain lists and numbers (loads with ``weights_only=True``)."""
        return {"history": json.loads(json.dumps(self.history)), "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the round history of a resumed run."""
        self.history = list(state_dict.get("history", []))
        self._last_step = int(state_dict.get("last_step", -1))

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check that several dissection callbacks in one trainer have distinct names."""
        if stage != "fit":
            return
        others = [
            c for c in trainer.callbacks
            if isinstance(c, BaseDissectionCallback) and c is not self and c.name == self.name
        ]
        if others:
            raise ValueError(
                f"several {type(self).__name__}s in one Trainer need distinct `name`s (they name the "
                f"TensorBoard tags and round folders); two have name={self.name!r}"
            )

    def _default_segmenter(self) -> Segmenter:
        """The segmenter given, else the embedded synthetic-world segmenter (chosen once)."""
        if self.segmenter is None:
            from lightning_dissect.segmenters import SyntheticSceneSegmenter

            self.segmenter = SyntheticSceneSegmenter()
        return self.segmenter

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
                f"{type(self).__name__}: {str(folder)!r} already holds {len(files)} round(s) dissected with other "
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
        finish(result, self.round_logger.prefix, writers, lambda message: self._add_failure(failures, result, message))

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
            ablations, causal = self._interventions(trainer, pl_module, result)
            if ablations:
                result.ablations = {name: [r.to_dict() for r in records] for name, records in ablations.items()}
        except Exception as err:  # noqa: BLE001 - never corrupt training; report with context
            context = (
                f"{type(self).__name__} round at global_step={step}, epoch={epoch}, "
                f"layers={self.layers} failed: {type(err).__name__}: {err}"
            )
            if self.on_error == "raise":
                raise RuntimeError(context) from err
            _warn_failure(context + "\n" + traceback.format_exc(limit=4), own=not isinstance(err, OtherRankError))
            return None
        # the round is computed: it reaches the history whatever happens to its sinks
        failures: list[str] = []
        content = self._content(result, ablations, log_step, failures, causal) if trainer.is_global_zero else None
        self.last_result = result
        entry = round_entry(result, step, epoch)
        if causal:
            entry["causal"] = causal_entry(causal)
        self.history.append(entry)
        if content is not None:
            self._write(trainer, content, failures)
        if failures and self.on_error == "raise":
            raise RuntimeError(
                f"{type(self).__name__} round at global_step={step} is kept in `history`, but writing it failed: "
                + "; ".join(failures)
            )
        return result

    def _part_failed(self, message: str, err: BaseException) -> None:
        """A part of a round besides the dissection failed: raise it, or warn (naming this class) and go on."""
        if self.on_error == "raise":
            raise err
        rank_zero_warn(f"{type(self).__name__} {message}")

    # ------------------------------------------------------------------ sinks
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
        self._add_failure(failures, result, f"could not write {what}: {type(err).__name__}: {err}")

    def _add_failure(self, failures: list[str], result: DissectionResult, message: str) -> None:
        failures.append(message)
        rank_zero_warn(
            f"{type(self).__name__} {message} (round at global_step={result.metadata.get('global_step')}; the round "
            "is kept in `history`, and the other loggers and files are unaffected)"
        )

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
                    f"{type(self).__name__}: {kind} receives the dissection's scalars only, not its {NOT_DELIVERED}"
                )
        deliver(content, writers, lambda message: self._add_failure(failures, result, message))


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
