"""Loading what a command names: ``MODULE:ATTR`` objects, generators, checkpoints, segmenters."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning_dissect.engine.discovery import find_generator_or_self

__all__ = [
    "CLIError",
    "CheckpointError",
    "describe_error",
    "load_object",
    "load_module",
    "load_generator",
    "load_segmenter",
    "check_checkpoint",
    "check_output",
]


class CLIError(Exception):
    """A user error: printed as one ``error: ...`` line, exit status 2."""


class CheckpointError(CLIError):
    """A checkpoint that is missing, unreadable, truncated or does not fit the model."""


def load_object(spec: str, option: str = "--generator") -> Any:
    """Import ``module:attribute`` (or ``path/to/file.py:attribute``) and return the attribute.

    The current directory is importable, as with ``python -m``.

    Examples:
        >>> load_object("collections:OrderedDict").__name__
        'OrderedDict'
        >>> try:
        ...     load_object("collections")
        ... except CLIError as err:
        ...     print(err)
        --generator must look like 'module:attribute', got 'collections'

    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CLIError(f"{option} must look like 'module:attribute', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise CLIError(f"{option}: file not found: {module_name}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except CLIError:
        raise
    except ImportError as err:
        raise CLIError(f"{option}: cannot import module {module_name!r}: {err}") from err
    except Exception as err:  # the user's module raised while importing
        raise CLIError(
            f"{option}: importing {module_name!r} failed: {type(err).__name__}: {err}"
        ) from err
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise CLIError(
                f"{option}: module {module_name!r} has no attribute {attribute!r}"
            ) from err
    return obj


def check_checkpoint(checkpoint: str | None, option: str = "--checkpoint") -> None:
    """A one-line :class:`CLIError` for a checkpoint path that is missing, a folder or unreadable."""
    if checkpoint is None:
        return
    path = Path(checkpoint)
    if path.is_dir():
        raise CheckpointError(f"{option}: {checkpoint} is a directory; give the checkpoint file inside it")
    if not path.exists():
        raise CheckpointError(f"{option}: file not found: {checkpoint}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{option}: {checkpoint} is not readable")


def _checkpoint_error(checkpoint: str, err: BaseException) -> str:
    """Name a truncated or corrupt checkpoint instead of the raw OSError/unpickling error."""
    from lightning_dissect._utils.torch_messages import checkpoint_reason, is_truncated_checkpoint

    if is_truncated_checkpoint(err):
        return f"{checkpoint} is truncated or not a PyTorch checkpoint ({type(err).__name__})"
    return f"{type(err).__name__}: {checkpoint_reason(err, limit=500)}"


def _weights_only(cls: type) -> dict[str, bool]:
    """``weights_only=True`` for ``load_from_checkpoint`` where Lightning takes it (2.4+).

    A checkpoint is data: it must never run code when it is read. torch >= 2.6 (required) loads
    weights only by default; passing it explicitly keeps that true whatever a Lightning version
    defaults to.
    """
    import inspect

    try:
        parameters = inspect.signature(cls.load_from_checkpoint).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return {}
    return {"weights_only": True} if "weights_only" in parameters else {}


def describe_error(err: BaseException) -> str:
    """``TypeName: message`` of an error, for one-line CLI messages."""
    return f"{type(err).__name__}: {err}"


def load_generator(spec: str, checkpoint: str | None, device: str) -> tuple[Any, Any, str | None]:
    """Load ``(model, generator, attribute)`` from a ``--generator`` spec and an optional checkpoint.

    ``spec`` names a factory function, an ``nn.Module`` instance or a class; a class with
    ``load_from_checkpoint`` (a LightningModule) is loaded from ``checkpoint``, any other class or
    factory is called without arguments, and a plain module gets the checkpoint's ``state_dict``.
    The generator is the model's submodule found by :func:`~lightning_dissect.engine.discovery.find_generator_or_self`
    (``attribute`` names it; ``None`` when the model is the generator itself).
    """
    model = load_module(spec, checkpoint, device, "--generator")
    generator, attribute = find_generator_or_self(model)
    return model, generator, attribute


def load_module(spec: str, checkpoint: str | None, device: str, option: str = "--generator") -> Any:
    """Load the ``nn.Module`` a ``MODULE:ATTR`` spec names, with an optional checkpoint.

    ``spec`` names a factory function, an ``nn.Module`` instance or a class; a class with
    ``load_from_checkpoint`` (a LightningModule) is loaded from ``checkpoint``, any other class or
    factory is called without arguments, and a plain module gets the checkpoint's ``state_dict``.
    Errors name ``option``.
    """
    from torch import nn

    check_checkpoint(checkpoint)
    obj = load_object(spec, option)
    loaded = False
    if isinstance(obj, type):
        if checkpoint is not None and hasattr(obj, "load_from_checkpoint"):
            try:
                model = obj.load_from_checkpoint(checkpoint, map_location=device, **_weights_only(obj))
            except Exception as err:
                raise CheckpointError(
                    f"--checkpoint: {obj.__name__}.load_from_checkpoint({checkpoint!r}) failed: "
                    f"{_checkpoint_error(checkpoint, err)}"
                ) from err
            loaded = True
        else:
            if hasattr(obj, "load_from_checkpoint"):
                warnings.warn(
                    f"{option} {spec} is a LightningModule class given without --checkpoint: "
                    "dissecting freshly initialised (random) weights",
                    UserWarning,
                    stacklevel=2,
                )
            try:
                model = obj()
            except Exception as err:
                raise CLIError(
                    f"{option}: {spec} could not be created without arguments: "
                    f"{describe_error(err)} (use a factory function, or --checkpoint with a "
                    "LightningModule class)"
                ) from err
    elif isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj()
        except Exception as err:
            raise CLIError(f"{option}: calling {spec}() failed: {describe_error(err)}") from err
    else:
        raise CLIError(
            f"{option}: {spec} is a {type(obj).__name__}, not a factory, a module or a class"
        )
    if not isinstance(model, nn.Module):
        raise CLIError(f"{option}: {spec} gave a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None and not loaded:
        _load_state_dict(model, checkpoint, spec)
    return model


def _load_state_dict(model: Any, checkpoint: str, spec: str) -> None:
    """Load ``checkpoint``'s state dict (or its ``state_dict`` entry) into ``model``; errors name ``--checkpoint``."""
    import torch

    state = None
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as err:
        hint = _prefix_hint(state, model) if isinstance(err, RuntimeError) else None
        if hint is not None:
            raise CheckpointError(
                f"--checkpoint: the state dict of {checkpoint} does not fit {spec}: {hint}"
            ) from err
        raise CheckpointError(
            f"--checkpoint: loading the state dict of {checkpoint} into {spec} failed: "
            f"{_checkpoint_error(checkpoint, err)}"
        ) from err


def _prefix_hint(state: Any, model: Any) -> str | None:
    """Why a state dict does not fit a model when its keys carry submodule prefixes the model lacks.

    A LightningModule's checkpoint stores the generator's weights as ``generator.<key>`` (next to,
    say, ``discriminator.<key>``). Given with the bare generator class, every key misses. Returns
    ``None`` unless the model's keys are all found under one prefix ``"<name>."`` of the state's
    keys, or every key of the state starts with one such prefix that the model's keys lack; then
    says so and suggests naming the LightningModule class instead.

    Examples:
        >>> from torch import nn
        >>> state = {"generator.0.weight": 0, "generator.0.bias": 0, "discriminator.0.weight": 0}
        >>> hint = _prefix_hint(state, nn.Sequential(nn.Linear(1, 1)))
        >>> hint.split(":")[0]
        "the generator's keys are all there, each with the prefix 'generator.' (the checkpoint's keys start with \
'discriminator.', 'generator.')"
        >>> _prefix_hint({"0.weight": 0, "0.bias": 0}, nn.Sequential(nn.Linear(1, 1))) is None
        True
    """
    if not isinstance(state, dict) or not state:
        return None
    keys = [str(k) for k in state]
    heads = sorted({k.split(".", 1)[0] for k in keys if "." in k})
    own = set(model.state_dict())
    if not own or not heads or any(k.split(".", 1)[0] in heads for k in own):
        return None
    found = [h for h in heads if own <= {k[len(h) + 1:] for k in keys if k.startswith(h + ".")}]
    if not found and (len(heads) > 1 or not all("." in k for k in keys)):
        return None
    shown = ", ".join(repr(h + ".") for h in heads)
    if found:
        what = (f"the generator's keys are all there, each with the prefix {found[0] + '.'!r} "
                f"(the checkpoint's keys start with {shown})")
    else:
        what = f"every key starts with {shown}, which none of the generator's keys do"
    return (f"{what}: this is the checkpoint of a LightningModule; name that LightningModule class in "
            "--generator instead of the bare generator class")


def load_segmenter(spec: str, image_size: int, segmentation_size: int | None) -> Any:
    """``"synthetic"`` (the scene world's exact segmenter) or a ``module:attribute`` factory."""
    if spec == "synthetic":
        from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter

        try:
            return SyntheticSceneSegmenter(SceneWorld(image_size), resolution=segmentation_size)
        except (TypeError, ValueError) as err:
            raise CLIError(f"--segmenter synthetic: {err}") from err
    obj = load_object(spec, "--segmenter")
    if not hasattr(obj, "vocabulary") and callable(obj):
        try:
            obj = obj()
        except Exception as err:
            raise CLIError(f"--segmenter: calling {spec}() failed: {describe_error(err)}") from err
    from lightning_dissect.segmenters.base import check_segmenter

    try:
        check_segmenter(obj, "--segmenter")  # the checks every entry point makes
    except (TypeError, ValueError) as err:
        raise CLIError(f"--segmenter {spec} is not a segmenter: {err}") from err
    return obj




def check_output(path: str | None, option: str = "--output") -> None:
    """Before any work: a one-line :class:`CLIError` when the output folder cannot be written."""
    if path is None:
        return
    from lightning_dissect._utils.io import check_writable_output

    try:
        check_writable_output(path, option.lstrip("-"), directory=True, option=option)
    except ValueError as err:
        raise CLIError(str(err)) from err
