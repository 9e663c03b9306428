"""Finding the generator and its latent size on a user's module (callback and command line alike).

One search, one set of names, one set of messages:

* the generator is the first attribute path of :data:`GENERATOR_ATTRIBUTES` that holds an
  ``nn.Module`` (Lightning's GAN template: ``self.generator``; DCGAN code: ``netG``; ...);
* the latent size is the first positive int among :data:`LATENT_DIM_ATTRIBUTES`, looked up on
  ``hparams`` and then on the objects themselves;
* a flat size ``d`` is tried as ``(d,)`` and then ``(d, 1, 1)`` (DCGAN-style generators).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from torch import nn

__all__ = [
    "GENERATOR_ATTRIBUTES",
    "LATENT_DIM_ATTRIBUTES",
    "find_generator",
    "find_generator_or_self",
    "is_lightning_module",
    "find_latent_dim",
    "latent_shape_candidates",
]

GENERATOR_ATTRIBUTES: tuple[str, ...] = ("generator", "G", "netG", "gen", "net_g", "model.generator")
"""Attribute paths searched, in order, for the generator of a module."""

LATENT_DIM_ATTRIBUTES: tuple[str, ...] = ("latent_dim", "nz", "z_dim", "zdim", "latent_size", "noise_dim")
"""Names searched, in order, for the latent size (on ``hparams``, then as attributes)."""

GeneratorSpec = str | Callable[[Any], nn.Module] | None
"""An attribute path (``"generator"``, ``"model.G"``), a callable ``owner -> nn.Module``, or
``None`` to search :data:`GENERATOR_ATTRIBUTES`."""


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_generator(owner: Any, spec: GeneratorSpec = None, *, argument: str = "generator") -> nn.Module:
    """The generator module of ``owner`` (a LightningModule or any object holding one).

    Args:
        owner: The object to search.
        spec: An attribute path, a callable ``owner -> nn.Module``, or ``None`` to try
            :data:`GENERATOR_ATTRIBUTES` in order.
        argument: The option named in error messages (``"generator"``, ``"--generator"``).

    Returns:
        The generator (see :func:`find_generator_or_self` for "the owner is the generator").

    Raises:
        ValueError: Nothing found; the message lists the paths tried and how to say which.

    Examples:
        >>> class GAN(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net_g = nn.Linear(2, 2)
        >>> find_generator(GAN())
        Linear(in_features=2, out_features=2, bias=True)
    """
    if callable(spec) and not isinstance(spec, str):
        module = spec(owner)
        if not isinstance(module, nn.Module):
            raise TypeError(f"`{argument}` returned {type(module).__name__}, not an nn.Module")
        return module
    candidates = (spec,) if spec else GENERATOR_ATTRIBUTES
    found = _search(owner, candidates)
    if found is not None:
        module, path = found
        if isinstance(module, nn.Module):
            return module
        raise TypeError(f"`{argument}`={path!r} resolved to {type(module).__name__}, not an nn.Module")
    raise ValueError(
        f"could not find the generator on {type(owner).__name__}: looked for attribute(s) "
        f"{', '.join(repr(c) for c in candidates)}; pass `{argument}` (an attribute path or a "
        "callable module -> nn.Module)"
    )


def _search(owner: Any, candidates: Sequence[str]) -> tuple[Any, str] | None:
    """The first ``(value, path)`` of ``candidates`` that is an ``nn.Module`` (or the only one given)."""
    for path in candidates:
        try:
            value = _getattr_path(owner, path)
        except AttributeError:
            continue
        if isinstance(value, nn.Module) or len(candidates) == 1:
            return value, path
    return None


def is_lightning_module(obj: Any) -> bool:
    """Whether ``obj`` is a LightningModule (checked by class name, without importing Lightning).

    Examples:
        >>> is_lightning_module(nn.Linear(2, 2))
        False
    """
    return any(
        cls.__name__ == "LightningModule" and cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning")
        for cls in type(obj).__mro__
    )


def find_generator_or_self(owner: nn.Module) -> tuple[nn.Module, str | None]:
    """``(generator, attribute path)`` of a LightningModule, or ``(owner, None)`` for a plain module.

    Used where the object given may itself be the generator (the command line's ``--generator``):
    a plain ``nn.Module`` is the generator as named, even when it has a ``generator``-like
    attribute (BigGAN's wrapper has a ``.generator``); only inside a LightningModule (which trains
    a generator beside a discriminator) is :data:`GENERATOR_ATTRIBUTES` searched.

    Examples:
        >>> class Wrapper(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.generator = nn.Linear(2, 2)
        >>> find_generator_or_self(Wrapper())[1] is None
        True
    """
    if not is_lightning_module(owner):
        return owner, None
    found = _search(owner, GENERATOR_ATTRIBUTES)
    if found is not None and isinstance(found[0], nn.Module):
        return found[0], found[1]
    return owner, None


def find_latent_dim(*owners: Any) -> int | None:
    """The first positive int among :data:`LATENT_DIM_ATTRIBUTES` on ``owners`` (``hparams`` first).

    Examples:
        >>> class M:
        ...     hparams = {"z_dim": 64}
        >>> find_latent_dim(M())
        64
    """
    for owner in owners:
        hparams = getattr(owner, "hparams", None)
        for name in LATENT_DIM_ATTRIBUTES:
            for source in (hparams, owner):
                if source is None:
                    continue
                value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None


def latent_shape_candidates(
    latent_dim: int | None = None, latent_shape: Sequence[int] | None = None
) -> list[tuple[int, ...]]:
    """Latent shapes to try: the given shape, else ``(d,)`` then ``(d, 1, 1)``.

    Examples:
        >>> latent_shape_candidates(8)
        [(8,), (8, 1, 1)]
        >>> latent_shape_candidates(latent_shape=[4, 2])
        [(4, 2)]
    """
    if latent_shape is not None:
        return [tuple(int(s) for s in latent_shape)]
    if latent_dim is None:
        return []
    return [(int(latent_dim),), (int(latent_dim), 1, 1)]
