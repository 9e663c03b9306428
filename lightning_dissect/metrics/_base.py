"""Common base of the metrics: integer sum states, exact all-reduce sync and checked loading."""

from __future__ import annotations

from abc import abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_dissect._utils.checks import _shape
from lightning_dissect.metrics._sync import all_reduce_sum

__all__ = ["SumStateMetric"]


class SumStateMetric(Metric):
    """A :class:`torchmetrics.Metric` whose states are all int64 tensors reduced by summation.

    It gives its subclasses three things:

    * ``dist_sync_fn`` defaults to :func:`~lightning_dissect.metrics.all_reduce_sum` (exact, in
      place; no ``world_size`` copies of the states).
    * :meth:`synced_states`, a context in which the states are synchronised exactly as inside
      ``compute()``, for extra result methods (``counts()``, ``quantile()``, ...). It uses only
      public TorchMetrics API: ``sync_context`` with ``sync_on_compute``.
    * ``load_state_dict`` and ``merge_state`` refuse states that do not fit, with the same checks
      and messages: each incoming state must have the shape this metric was built for and an
      integer dtype, and every setting buffer named in :attr:`_setting_buffers` (e.g. the
      thresholds the counts were made at) must be equal; the error names the setting to change.

    Subclasses register their states with :meth:`_add_sum_state` and describe the axes of each
    state in :meth:`_state_axes`.
    """

    full_state_update: bool = False
    is_differentiable: bool = False

    #: Persistent buffers that describe how the states were counted (e.g. the thresholds); a
    #: loaded state dict must carry equal values (or none, for state dicts saved without them).
    _setting_buffers: tuple[str, ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dist_sync_fn", all_reduce_sum)
        super().__init__(**kwargs)

    def _add_sum_state(self, name: str, shape: tuple[int, ...]) -> None:
        """Register a zero-initialised int64 sum state of ``shape``, held in memory once.

        TorchMetrics keeps a copy of every state's initial value to reset to, which doubles the
        resident memory of large count states. A sum state always resets to zeros of its shape,
        so its stored default is one 0-d zero (following the metric's device and dtype moves) and
        :meth:`reset` rebuilds the zeros at full shape.
        """
        # registered with the 0-d default (TorchMetrics copies the default it is given), then set
        # to the full zeros: the large tensor is allocated once, not copied
        self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        setattr(self, name, torch.zeros(shape, dtype=torch.int64))
        self._sum_state_shapes = {**getattr(self, "_sum_state_shapes", {}), name: tuple(shape)}

    def reset(self) -> None:
        """Zero every state (at its full shape, on its device) and forget cached results."""
        super().reset()  # sets each sum state to its 0-d default on the state's device
        for name, shape in getattr(self, "_sum_state_shapes", {}).items():
            zero = getattr(self, name)
            setattr(self, name, torch.zeros(shape, dtype=zero.dtype, device=zero.device))

    @contextmanager
    def synced_states(self) -> Iterator[None]:
        """Context in which the states hold their sum over all processes, as inside ``compute()``.

        On leaving, the local (per-process) states are restored so that accumulation continues.
        Under DDP every rank must enter it (it is a collective operation), like ``compute()``.
        Outside a process group it does nothing.
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self.sync_on_compute,
            should_unsync=True,
        ):
            yield

    # ------------------------------------------------------------------ loading
    @abstractmethod
    def _state_axes(self) -> dict[str, tuple[tuple[str, int], ...]]:
        """For every state, its axes as ``(setting that sets the length, length)`` (each metric says)."""

    def _settings_text(self) -> str:
        """The settings the states depend on, for messages (``num_units=4, ...``)."""
        return ""

    def _rank_mismatch(self, key: str, shape: tuple[int, ...]) -> str:
        """Explain a loaded state with another number of dimensions (override for specifics)."""
        return ""

    def _setting_mismatch(self, key: str, value: Tensor) -> str | None:
        """Explain a setting buffer whose loaded value differs (override for specifics)."""
        return None

    def _state_errors(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        errors = []
        name = type(self).__name__
        settings = self._settings_text()
        built = f"this {name} ({settings})" if settings else f"this {name}"
        for key, axes in self._state_axes().items():
            if prefix + key not in state_dict:
                continue
            value = state_dict[prefix + key]
            if not isinstance(value, Tensor):
                errors.append(f"state `{key}` must be a tensor, got {type(value).__name__}")
                continue
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                errors.append(f"state `{key}` must be an integer count tensor, got dtype {value.dtype}")
                continue
            shape = tuple(value.shape)
            expected = tuple(size for _, size in axes)
            if shape == expected:
                continue
            if len(shape) != len(expected):
                hint = self._rank_mismatch(key, shape) or (
                    "axes " + ", ".join(setting for setting, _ in axes)
                )
                errors.append(
                    f"state `{key}` has shape {_shape(shape)} but {built} expects "
                    f"{_shape(expected)}: {hint}"
                )
                continue
            differing = [
                f"`{setting}` ({got} in the loaded state, {size} here)"
                for (setting, size), got in zip(axes, shape)
                if got != size
            ]
            errors.append(
                f"state `{key}` has shape {_shape(shape)} but {built} expects {_shape(expected)}: "
                f"the state was saved by a metric built with another " + ", ".join(differing)
            )
        present = [key for key in self._state_axes() if prefix + key in state_dict]
        missing = [key for key in self._state_axes() if prefix + key not in state_dict]
        if present and missing:
            errors.append(
                f"the state dict has the states {present} but not {missing} that {built} keeps: it "
                "was saved by a metric built with other settings"
            )
        for key in self._setting_buffers:
            if prefix + key not in state_dict:
                continue
            message = self._setting_mismatch(key, state_dict[prefix + key])
            if message:
                errors.append(message)
        return errors

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's counts (or a dict of states) to these, after the checks of loading.

        A metric of the same class built with other settings (another unit count, other
        thresholds, another number of levels) is refused with the message ``load_state_dict``
        gives, never merged into wrong sums or failed with a raw broadcast error.

        Raises:
            TypeError: ``incoming_state`` is neither a dict nor a metric of this class.
            ValueError: The states do not fit (each problem named).
        """
        if isinstance(incoming_state, Metric):
            if not isinstance(incoming_state, type(self)):
                raise TypeError(
                    f"{type(self).__name__}.merge_state needs a {type(self).__name__} or a dict of its "
                    f"states, got a {type(incoming_state).__name__}"
                )
            state = {key: getattr(incoming_state, key) for key in (*self._state_axes(), *self._setting_buffers)}
        elif isinstance(incoming_state, dict):
            state = dict(incoming_state)
        else:
            raise TypeError(
                f"{type(self).__name__}.merge_state needs a {type(self).__name__} or a dict of its states, "
                f"got {type(incoming_state).__name__}"
            )
        errors = self._state_errors(state, "")
        missing = [key for key in self._state_axes() if key not in state]
        if missing and not errors:
            errors.append(f"the incoming state lacks {missing}")
        if errors:
            raise ValueError(f"{type(self).__name__}.merge_state: " + "; ".join(errors))
        super().merge_state({key: state[key].to(getattr(self, key).device) for key in self._state_axes()})

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        errors = self._state_errors(state_dict, prefix)
        if errors:
            # Refuse the whole metric: load none of its states (PyTorch raises RuntimeError with
            # these messages once every module has been visited).
            for key in (*self._state_axes(), *self._setting_buffers):
                state_dict.pop(prefix + key, None)
            error_msgs.extend(f"{type(self).__name__}: {e}" for e in errors)
            return
        loading = [key for key in self._state_axes() if prefix + key in state_dict]
        if loading:
            # Start from a clean metric so that no value cached by an earlier compute() survives.
            self.reset()
        for key in loading:
            if prefix + key in state_dict:
                state_dict[prefix + key] = state_dict[prefix + key].to(
                    device=getattr(self, key).device, dtype=torch.int64
                )
        absent = [prefix + key for key in self._setting_buffers if prefix + key not in state_dict]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if loading and not error_msgs:
            # The only private TorchMetrics attribute used here: loaded counts are data seen, so
            # compute() must not warn that update() was never called.
            self._update_count = max(self._update_count, 1)
        # State dicts written before the setting buffers existed lack them; accept those.
        for key in absent:
            if key in missing_keys:
                missing_keys.remove(key)
