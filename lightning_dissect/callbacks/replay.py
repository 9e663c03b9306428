"""Emergence of a run that already exists: dissect a series of checkpoints as the callback would have.

:func:`find_checkpoints` expands files and folders into checkpoint files, :func:`order_checkpoints`
reads each one's stored ``global_step`` and orders them, and :func:`dissect_checkpoints` dissects
every checkpoint on the same seeded latent bank, writing after each one

* the round JSON at :func:`~lightning_dissect.callbacks.history.round_path` ``(output, step)`` — the
  callback's layout, so :func:`~lightning_dissect.callbacks.history.load_history` reads them back;
* the callback's TensorBoard tags at the checkpoint's ``global_step`` through
  :class:`~lightning_dissect.loggers.rounds.RoundLogger` (``tensorboard --logdir output``).

Re-running over the same ``output`` skips checkpoints that already have a round (same
``global_step`` and same checkpoint file, recorded in the round's metadata). New rounds are
appended to TensorBoard in a new event file when they all come after the existing ones; when one
comes before an existing round (so the churn and units-by-round pictures of later rounds change),
the event files are rebuilt from every round. Under an initialised process group every rank
dissects its shard of the bank; only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_dissect._utils.checks import argument_name
from lightning_dissect._utils.distributed import world
from lightning_dissect._utils.torch_messages import cannot_mmap, checkpoint_reason, refused_global
from lightning_dissect.callbacks.history import differing_settings, load_history, round_path
from lightning_dissect.config import DissectionConfig
from lightning_dissect.dissection import dissect
from lightning_dissect.engine.generator import Generate
from lightning_dissect.engine.hooks import OutputSelector
from lightning_dissect.engine.latents import LatentSampler
from lightning_dissect.loggers import TensorBoardWriter
from lightning_dissect.loggers.rounds import RoundLogger, round_entry
from lightning_dissect.result import DissectionResult
from lightning_dissect.segmenters.base import Segmenter
from lightning_dissect.visual.round_pictures import segmenter_palette

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "Checkpoint",
    "EmergenceRun",
    "find_checkpoints",
    "read_checkpoint_step",
    "order_checkpoints",
    "dissect_checkpoints",
]

#: File endings taken as checkpoints when a folder is given.
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")

_REBUILD_MARKER = ".tensorboard-rebuild"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of the series.

    Attributes:
        path: The file.
        global_step: The stored ``global_step``; for a file without one, the steps go on from the
            largest stored step, one per file, in file-name order.
        epoch: The stored ``epoch`` (``None`` when absent).
        stored_step: Whether ``global_step`` was stored in the file.
    """

    path: Path
    global_step: int
    epoch: int | None = None
    stored_step: bool = True


@dataclass
class EmergenceRun:
    """What :func:`dissect_checkpoints` did.

    Attributes:
        rounds: Every round in ``output`` afterwards (earlier and new), in step order.
        dissected: Checkpoints dissected now.
        skipped: Checkpoints that already had a round.
        failed: ``(path, reason)`` of checkpoints that could not be loaded or dissected.
        rebuilt_tensorboard: Whether the event files were rebuilt from all rounds.
        generator: The generator of the last checkpoint dissected now (``None`` when none was).
    """

    rounds: list[DissectionResult] = field(default_factory=list)
    dissected: list[Checkpoint] = field(default_factory=list)
    skipped: list[Checkpoint] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    rebuilt_tensorboard: bool = False
    generator: nn.Module | None = None


def find_checkpoints(paths: Iterable[str | Path], suffixes: Sequence[str] = CHECKPOINT_SUFFIXES) -> list[Path]:
    """Expand files and folders (their ``*.ckpt``, ``*.pt``, ``*.pth``, not recursive) into files.

    Raises:
        FileNotFoundError: If a path does not exist (the message names it).

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.ckpt", "a.pt", "notes.txt"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [p.name for p in find_checkpoints([folder])]
        ['a.pt', 'b.ckpt']
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"checkpoint path not found: {raw}")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def read_checkpoint_step(path: str | Path) -> tuple[int | None, int | None]:
    """``(global_step, epoch)`` stored in a checkpoint (``None`` for what it lacks).

    Loads with ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)`` (tensors are
    memory-mapped, not read). A file that safe loading refuses (custom pickled objects) counts as
    having no step; a file that cannot be read at all raises.

    Raises:
        OSError, RuntimeError, ValueError, EOFError: The file is unreadable or corrupt.
    """
    import pickle

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if not cannot_mmap(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as err:
        if refused_global(err):  # a real pickle with custom objects: no safe step
            return None, None
        raise ValueError(checkpoint_reason(err)) from None
    if not isinstance(state, Mapping):
        return None, None

    def number(key: str) -> int | None:
        value = state.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return number("global_step"), number("epoch")


def order_checkpoints(
    paths: Iterable[str | Path], report: Callable[[str], None] = print
) -> list[Checkpoint]:
    """Read the steps of ``paths`` and order them: by stored ``global_step``, then by file name.

    Files without a stored step come after the others, in file-name order, numbered on from the
    largest stored step. An unreadable file is reported in one line through ``report`` and left
    out; so is a second file with the same step as an earlier one (e.g. ``last.ckpt`` next to the
    epoch checkpoint it copies; the first by file name is kept).
    """
    stepped: list[Checkpoint] = []
    unstepped: list[tuple[Path, int | None]] = []
    for path in paths:
        path = Path(path)
        try:
            step, epoch = read_checkpoint_step(path)
        except Exception as err:  # noqa: BLE001 - any failure to read means: skip this file
            report(f"skipped {path}: unreadable checkpoint ({type(err).__name__}: {checkpoint_reason(err)})")
            continue
        if step is None:
            unstepped.append((path, epoch))
        else:
            stepped.append(Checkpoint(path, step, epoch, True))
    stepped.sort(key=lambda c: (c.global_step, c.path.name, str(c.path)))
    start = max((c.global_step for c in stepped), default=-1) + 1
    unstepped.sort(key=lambda item: (item[0].name, str(item[0])))
    ordered = stepped + [Checkpoint(p, start + i, e, False) for i, (p, e) in enumerate(unstepped)]
    kept: list[Checkpoint] = []
    for checkpoint in ordered:
        if kept and kept[-1].global_step == checkpoint.global_step:
            report(f"skipped {checkpoint.path}: same global_step {checkpoint.global_step} as {kept[-1].path.name}")
            continue
        kept.append(checkpoint)
    return kept


def _same_file(recorded: Any, path: Path) -> bool:
    if not isinstance(recorded, str):
        return False
    old = Path(recorded)
    if old.exists():
        try:
            return old.resolve() == path.resolve()
        except OSError:
            return False
    return old.name == path.name  # the run folder was moved: match on the file name


def _check_settings(rounds: Sequence[DissectionResult], config: DissectionConfig, layers: Sequence[str],
                    output: Path, output_name: str = "output") -> None:
    if not rounds:
        return
    wanted = {k: v for k, v in vars(config).items()}
    wanted["layers"] = list(layers)
    recorded = rounds[0].settings  # every round was written with the same settings; the first one tells
    differing = differing_settings(recorded, wanted)
    if differing:
        key = differing[0]
        raise ValueError(
            f"{argument_name(output_name)} {str(output)!r} holds rounds dissected with {key}={recorded[key]!r}, "
            f"this run has {key}={wanted.get(key)!r}; use the same settings or another output folder"
        )


def _remove_event_files(output: Path) -> None:
    for file in output.glob("events.out.tfevents.*"):
        file.unlink()


def dissect_checkpoints(
    checkpoints: Sequence[Checkpoint],
    load: Callable[[Checkpoint], nn.Module],
    layers: Sequence[str],
    segmenter: Segmenter,
    output: str | Path,
    *,
    config: DissectionConfig,
    latent_shape: Sequence[int] | None = None,
    latent_sampler: LatentSampler | None = None,
    generate: Generate | None = None,
    selector: OutputSelector | Mapping[str, OutputSelector] = None,
    metadata: Mapping[str, Any] | None = None,
    tensorboard: bool = True,
    report: Callable[[str], None] = print,
    names: Mapping[str, str] | None = None,
) -> EmergenceRun:
    """Dissect each checkpoint of a series on one seeded latent bank; write rounds and TensorBoard.

    Args:
        checkpoints: The series, in order (see :func:`order_checkpoints`).
        load: ``checkpoint -> generator`` with that checkpoint's weights, on the dissection device.
            A checkpoint whose ``load`` raises, or whose dissection fails (a diverged step whose
            generator gives NaN), is reported in one line, recorded in ``run.failed`` and skipped.
        layers: Layer names relative to the generator.
        segmenter: Images → concept labels.
        output: Folder of the rounds (``output/dissection/round_<step>.json``) and event files.
        config: The dissection settings (the same for every checkpoint; ``seed`` fixes the bank).
        latent_shape: Shape of one latent.
        latent_sampler: Custom ``(n, torch.Generator) -> latents``.
        generate: Custom ``(generator, latents) -> images``.
        selector: Picks the tensor from tuple/dict layer outputs.
        metadata: Extra metadata of every round (each also gets ``checkpoint``, ``global_step``
            and ``epoch``).
        tensorboard: Write TensorBoard event files (needs the ``tensorboard`` package).
        report: Called with one line per skipped or failed checkpoint and per written round.
        names: How errors name the arguments (the command line passes ``{"output": "--output"}``);
            each defaults to its own name.

    Returns:
        An :class:`EmergenceRun`.

    Raises:
        ValueError: If ``output`` holds rounds dissected with other settings or layers.

    Examples:
        >>> import tempfile
        >>> from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter
        >>> net = nn.Sequential(nn.Linear(8, 4 * 16 * 16), nn.Unflatten(1, (4, 16, 16)),
        ...                     nn.Conv2d(4, 3, 1), nn.Tanh())
        >>> out = tempfile.mkdtemp()
        >>> run = dissect_checkpoints([Checkpoint(Path("a.pt"), 10)], lambda c: net, ["2"],
        ...                           SyntheticSceneSegmenter(SceneWorld(16)), out, latent_shape=(8,),
        ...                           config=DissectionConfig(num_samples=16, progress=False),
        ...                           tensorboard=False, report=lambda line: None)
        >>> [r.metadata["global_step"] for r in load_history(out)]
        [10]
    """
    out, layers = Path(output), list(layers)
    existing = load_history(out) if out.is_dir() else []
    if existing:
        _check_settings(existing, config, layers, out, (names or {}).get("output", "output"))
    run = EmergenceRun()
    by_step = {int(r.metadata.get("global_step", -1)): r for r in existing}
    todo = _plan(checkpoints, by_step, out, run, report)
    book = _open_logbook(out, layers, segmenter, config, tensorboard, by_step, todo, run)

    def dissect_one(generator: nn.Module, checkpoint: Checkpoint) -> DissectionResult:
        return dissect(generator, layers, segmenter, latent_shape=latent_shape, latent_sampler=latent_sampler,
                       generate=generate, selector=selector, config=config,
                       metadata=_round_metadata(metadata, checkpoint))

    try:
        for step, item in _merged_series(by_step, todo):
            if isinstance(item, DissectionResult):
                book.replay(item, step)
            elif (result := _dissect_loaded(item, load, dissect_one, run, report)) is not None:
                book.record(result, step, item, report)
                run.dissected.append(item)
        book.finish()
    finally:
        book.close()
    run.rounds = book.rounds
    return run


def _plan(checkpoints: Sequence[Checkpoint], by_step: Mapping[int, DissectionResult], out: Path,
          run: EmergenceRun, report: Callable[[str], None]) -> list[Checkpoint]:
    """The checkpoints to dissect now: those without a round of the same step and file (rank 0's plan)."""
    todo: list[Checkpoint] = []
    for checkpoint in checkpoints:
        old = by_step.get(checkpoint.global_step)
        if old is not None and _same_file(old.metadata.get("checkpoint"), checkpoint.path):
            run.skipped.append(checkpoint)
            report(f"skipped {checkpoint.path}: round at step {checkpoint.global_step} already in {out}")
        else:
            todo.append(checkpoint)
    if world()[1] > 1:  # every rank follows rank 0's plan (the same files, in the same order)
        plan = [todo]
        torch.distributed.broadcast_object_list(plan, src=0)
        todo = plan[0]
    return todo


def _merged_series(
    by_step: Mapping[int, DissectionResult], todo: Sequence[Checkpoint]
) -> list[tuple[int, DissectionResult | Checkpoint]]:
    """Existing rounds (replaced where a checkpoint is redone) and new checkpoints, in step order."""
    todo_steps = {c.global_step for c in todo}
    series: list[tuple[int, DissectionResult | Checkpoint]] = [
        (s, r) for s, r in by_step.items() if s not in todo_steps
    ]
    series += [(c.global_step, c) for c in todo]
    series.sort(key=lambda item: item[0])
    return series


def _round_metadata(metadata: Mapping[str, Any] | None, checkpoint: Checkpoint) -> dict[str, Any]:
    """The metadata of the round of ``checkpoint``."""
    return {
        **dict(metadata or {}),
        "checkpoint": str(checkpoint.path.resolve()),
        "global_step": checkpoint.global_step,
        "epoch": checkpoint.epoch,
        "stored_step": checkpoint.stored_step,
        "name": None,
    }


def _dissect_loaded(
    checkpoint: Checkpoint,
    load: Callable[[Checkpoint], nn.Module],
    dissect_one: Callable[[nn.Module, Checkpoint], DissectionResult],
    run: EmergenceRun,
    report: Callable[[str], None],
) -> DissectionResult | None:
    """Load ``checkpoint`` and dissect it; ``None`` (reported, recorded in ``run.failed``) if it cannot.

    A checkpoint that loads but cannot be dissected (a diverged step whose generator gives NaN) is
    recorded as failed with its file and reason, and the series goes on.
    """
    try:
        generator = load(checkpoint)
    except Exception as err:  # noqa: BLE001 - a bad file must not stop the series
        run.failed.append((checkpoint.path, checkpoint_reason(err)))
        report(f"skipped {checkpoint.path}: cannot load it ({checkpoint_reason(err)})")
        return None
    try:
        result = dissect_one(generator, checkpoint)
    except Exception as err:  # noqa: BLE001 - one diverged step must not stop the series
        # under a process group every rank raises here together (the runner agrees on failures)
        reason = f"{type(err).__name__}: {checkpoint_reason(err)}"
        run.failed.append((checkpoint.path, f"step {checkpoint.global_step}: {reason}"))
        report(f"failed {checkpoint.path} (step {checkpoint.global_step}): {reason}")
        return None
    run.generator = generator
    return result


@dataclass
class _Logbook:
    """Where the rounds of a series go: round files and TensorBoard (rank 0 only), and the history."""

    out: Path
    round_logger: RoundLogger
    writes: bool
    rebuild: bool = False
    writer: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[DissectionResult] = field(default_factory=list)

    def replay(self, result: DissectionResult, step: int) -> None:
        """An existing round: logged again only when the event files are rebuilt."""
        if self.rebuild and self.writer is not None:
            _log(self.round_logger, self.writer, result, step, self.history)
        self._append(result, step)

    def record(self, result: DissectionResult, step: int, checkpoint: Checkpoint,
               report: Callable[[str], None]) -> None:
        """A new round: logged, then written (a round on disk is a round logged)."""
        if self.writes:
            if self.writer is not None:
                _log(self.round_logger, self.writer, result, step, self.history)
            result.to_json(round_path(self.out, step))
            report(f"round {step}: {checkpoint.path} -> {round_path(self.out, step)}")
        self._append(result, step)

    def _append(self, result: DissectionResult, step: int) -> None:
        self.history.append(round_entry(result, step, int(result.metadata.get("epoch") or 0)))
        self.rounds.append(result)

    def finish(self) -> None:
        """After a complete rebuild, drop the marker of an interrupted one."""
        if self.rebuild and self.writer is not None:
            self.writer.flush()
            (self.out / _REBUILD_MARKER).unlink(missing_ok=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _open_logbook(out: Path, layers: Sequence[str], segmenter: Segmenter, config: DissectionConfig,
                  tensorboard: bool, by_step: Mapping[int, DissectionResult], todo: Sequence[Checkpoint],
                  run: EmergenceRun) -> _Logbook:
    """The logbook of the series, with a SummaryWriter when rank 0 has TensorBoard rounds to write.

    The event files are rebuilt from every round when a new round comes at or before an existing one,
    or when an earlier rebuild was interrupted (its marker file is still there).
    """
    marker = out / _REBUILD_MARKER
    last_existing = max(by_step, default=-1)
    rebuild = tensorboard and bool(by_step) and (
        marker.exists() or any(c.global_step <= last_existing for c in todo)
    )
    round_logger = RoundLogger(
        None,
        categories=segmenter.vocabulary.categories,
        palette=segmenter_palette(segmenter),
        num_visualized_units=config.num_visualized_units,
    )
    book = _Logbook(out, round_logger, writes=world()[0] == 0, rebuild=rebuild)
    if book.writes and tensorboard and (todo or rebuild):
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        if rebuild:
            marker.write_text("rebuilding the TensorBoard event files; an interrupted rebuild is redone\n")
            _remove_event_files(out)
            run.rebuilt_tensorboard = True
        book.writer = SummaryWriter(str(out))
    return book


def _log(
    round_logger: RoundLogger, writer: Any, result: DissectionResult, step: int, history: Sequence[Mapping[str, Any]]
) -> None:
    """The callback's rounds for a SummaryWriter: scalars, tables and pictures (the same content)."""
    TensorBoardWriter(writer, scalars=True).write(round_logger.content(result, step, history=history))
