"""``.plot()`` helpers: TorchMetrics' convention (``(fig, ax)``, matplotlib imported only when plotting)."""

from __future__ import annotations

from typing import Any

from lightning_dissect.visual.colours import SCALE_STOPS

__all__ = ["pyplot", "figure_and_axes", "iou_colormap"]


def pyplot() -> Any:
    """``matplotlib.pyplot``, or a ``ModuleNotFoundError`` saying how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError(
            "`.plot()` needs matplotlib; install it with `pip install 'lightning-dissect[plot]'` "
            "(or `pip install matplotlib`)"
        ) from err
    return plt


def figure_and_axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """A new figure and axes of ``size`` inches, or ``ax`` and its figure when given."""
    if ax is not None:
        return ax.get_figure(), ax
    return pyplot().subplots(figsize=size)


def iou_colormap() -> Any:
    """The shared IoU colour scale (:data:`~lightning_dissect.visual.colours.SCALE_STOPS`) as a matplotlib colormap."""
    pyplot()
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("dissection_iou", [tuple(c / 255 for c in s) for s in SCALE_STOPS])
