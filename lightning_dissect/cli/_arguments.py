"""Options shared by the commands, with defaults from :data:`~lightning_dissect.config.CLI_DEFAULTS`."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from lightning_dissect.config import (
    CLI_DEFAULTS,
    PRESETS,
    QUANTILE_OVER,
    THRESHOLD_MODES,
    UNIT_AREAS,
    DissectionConfig,
    check_setting,
    config_defaults,
)
from lightning_dissect.engine.discovery import GENERATOR_ATTRIBUTES, LATENT_DIM_ATTRIBUTES
from lightning_dissect.interpretability import INTERPRETABLE_RULES

__all__ = [
    "CONFIG_OPTIONS",
    "add_command",
    "add_generator_arguments",
    "add_network_arguments",
    "add_dissection_arguments",
    "add_run_arguments",
    "config_settings",
    "non_negative_int",
    "positive_int",
]

_DEFAULTS = config_defaults(CLI_DEFAULTS)

CONFIG_OPTIONS: dict[str, tuple[str, str | None, str]] = {
    "num_samples": ("--num-samples", "N", "latents in the dissection bank"),
    "batch_size": ("--batch-size", "B", "latents per generator call"),
    "seed": ("--seed", "SEED", "seed of the latent bank (iqr level selection uses SEED+1)"),
    "threshold_mode": (
        "--threshold-mode", "{" + ",".join(THRESHOLD_MODES) + "}",
        "per-unit thresholds: a fixed activation quantile (NetDissect) or the level maximising the "
        "information quality ratio (GAN Dissection)",
    ),
    "quantile": (
        "--quantile", "Q",
        "quantile level of the thresholds in quantile mode, or a named level: netdissect (0.995, the "
        "Network Dissection paper's top 0.5 %%), pnas (0.99); --preset netdissect reproduces NetDissect-Lite",
    ),
    "quantile_over": (
        "--quantile-over", "{" + ",".join(QUANTILE_OVER) + "}",
        "take each unit's quantile over the upsampled maps (the PNAS code) or the raw maps (NetDissect)",
    ),
    "unit_area": (
        "--unit-area", "{" + ",".join(UNIT_AREAS) + "}",
        "count a unit's area over all images (plain IoU) or per concept category, only where its active "
        "pixels overlap a label of the category (NetDissect-Lite)",
    ),
    "preset": (
        "--preset", "{" + ",".join(PRESETS) + "}",
        "settings that reproduce a tool: netdissect (NetDissect-Lite), pnas (the PNAS code, the default), "
        "netdissect-level-pnas-convention; options typed beside it win over its values, even at their defaults",
    ),
    "num_levels": ("--num-levels", "K", "candidate levels in iqr mode"),
    "level_selection_samples": (
        "--level-selection-samples", "N", "iqr mode: choose levels on a separate bank of N latents (seed+1)",
    ),
    "iou_threshold": ("--iou-threshold", "T", "an interpretable unit's best IoU exceeds T"),
    "interpretable": (
        "--interpretable", "{" + ",".join(INTERPRETABLE_RULES) + "}",
        "which units count as interpretable: significant (best IoU above T, excess over chance "
        "(IoU - chance) / (1 - chance) at least E and p-value against chance at most P), paper (best IoU "
        "above T alone, the papers' fixed cut) or chance_ratio (at least R times the chance IoU, an earlier default)",
    ),
    "chance_ratio": (
        "--chance-ratio", "R", "chance_ratio rule: an interpretable unit's IoU is at least R × its chance IoU",
    ),
    "min_excess": (
        "--min-excess", "E", "significant rule: least excess over chance, (IoU - chance) / (1 - chance)",
    ),
    "max_p_value": ("--max-p-value", "P", "significant rule: largest p-value of the swap test against chance"),
    "chance_groups": (
        "--chance-groups", "G", "groups of samples (index mod G, 2 to 16) behind each unit's p-value against chance",
    ),
    "iqr_threshold": ("--iqr-threshold", "T", "iqr mode: a unit is interpretable only when its IQR also exceeds T"),
    "min_concept_fraction": (
        "--min-concept-fraction", "F",
        "iqr mode: ignore concepts covering less than F of the pixels when choosing levels",
    ),
    "top_k": ("--top-k", "K", "top images kept per unit (by spatial max activation)"),
    "num_visualized_units": (
        "--visualize-units", "N", "per layer, render image strips of the N best units for the report",
    ),
    "chance_baseline": (
        "--no-chance-baseline", None, "skip the chance IoU (images paired with another image's segmentation)",
    ),
    "relative_accuracy": (
        "--relative-accuracy", "A", "relative accuracy of the quantile histogram behind the thresholds",
    ),
    "progress": ("--quiet", None, "no progress bars"),
    "device": ("--device", None, "where to run: auto (cuda when available, else cpu), cpu, cuda, cuda:1"),
}
"""``DissectionConfig`` field -> ``(option, metavar, help)``: every field has its option.

Each option's value is checked by the field's own rule (:func:`~lightning_dissect.config.check_setting`),
so the command line refuses exactly what ``DissectionConfig.validate`` refuses, naming the option.
``--no-chance-baseline`` and ``--quiet`` are switches that turn a field off (``--quiet`` is added by
:func:`add_run_arguments`); ``--device`` also takes ``auto``.
"""

_SWITCHES = ("chance_baseline", "progress")


def _literal(text: str) -> object:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, anything else stays text (the field's rule judges the type)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _setting(field_name: str, option: str, kind: str) -> Any:
    """The argparse ``type=`` of a config field: parse ``text``, then check it with the field's rule."""

    def parse(text: str) -> Any:
        value: object = text if kind.startswith("str") else _literal(text)
        if isinstance(value, int) and kind.startswith("float"):
            value = float(value)
        if value == "None" and "None" in kind:
            value = None
        try:
            return check_setting(field_name, value, option)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None  # the check names `option` as typed

    parse.__name__ = field_name  # argparse names the type in some messages
    return parse


GIVEN = "given_options"
"""The parsed namespace's attribute holding the ``DissectionConfig`` fields typed on the command line."""


class _GivenSetting(argparse.Action):
    """Store the option's value and record that it was typed (a preset never replaces it)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, {*getattr(namespace, GIVEN, ()), self.dest})


def _add_config_options(group: Any) -> None:
    """One option per :class:`~lightning_dissect.config.DissectionConfig` field, checked by its rule."""
    for f in fields(DissectionConfig):
        option, metavar, text = CONFIG_OPTIONS[f.name]
        if f.name == "progress":
            continue  # --quiet comes with --debug (add_run_arguments)
        if f.name in _SWITCHES:
            group.add_argument(option, action="store_true", help=text)
        elif f.name == "device":
            group.add_argument(option, default="auto", help=text)
        else:
            group.add_argument(
                option, dest=f.name, type=_setting(f.name, option, str(f.type)), default=_DEFAULTS[f.name],
                metavar=metavar, help=text, action=_GivenSetting,
            )


def config_settings(args: argparse.Namespace, *, device: str | None = None, visualize: bool = True) -> dict[str, Any]:
    """The :class:`~lightning_dissect.config.DissectionConfig` settings of parsed options.

    ``device`` replaces ``--device`` (after ``auto`` is resolved); with ``visualize=False`` no unit
    strips are rendered (``dissect`` without ``--output``). With ``--preset``, every option typed on
    the command line wins over the preset's value, even when typed at its default; the options not
    typed take the preset's values.
    """
    settings = {
        f.name: getattr(args, f.name) for f in fields(DissectionConfig) if f.name not in (*_SWITCHES, "device")
    }
    settings["chance_baseline"] = not args.no_chance_baseline
    settings["progress"] = not args.quiet
    settings["device"] = device if device is not None else args.device
    if not visualize:
        settings["num_visualized_units"] = 0
    if settings.get("preset") is not None:
        # an option that was not typed gives way to the preset's value; a typed one wins, even at its default
        given = getattr(args, GIVEN, set())
        settings = {k: v for k, v in settings.items() if k not in PRESETS[settings["preset"]] or k in given}
    return settings


def _int_at_least(minimum: int, what: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected sizes like 128,1,1, got {text!r}") from err
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 128,1,1, got {text!r}")
    return shape


def add_command(
    sub: Any, name: str, summary: str, description: str, *, show_defaults: bool = True
) -> argparse.ArgumentParser:
    """Register the sub-command ``name`` on the sub-command parsers ``sub`` and return its parser.

    ``summary`` is its line in the main ``--help``; with ``show_defaults`` its own ``--help`` lists
    the option defaults.
    """
    formatter = argparse.ArgumentDefaultsHelpFormatter if show_defaults else argparse.HelpFormatter
    return sub.add_parser(name, help=summary, description=description, formatter_class=formatter)


def add_generator_arguments(
    p: argparse.ArgumentParser, *, required: bool = True, one_layer: bool = False, layers_required: bool = True,
    layers_help: str = "",
) -> None:
    """``--generator``, ``--checkpoint``, ``--layers``, latent, call and selector options.

    ``required=False``: ``--generator`` may be replaced by ``--network`` (see
    :func:`add_network_arguments`); the command checks that exactly one is given. With
    ``one_layer``, ``--layer LAYER`` (one name, stored as ``layers``) replaces ``--layers``.
    ``layers_required=False``: ``--layers`` may be left out (the command takes them from elsewhere,
    ``layers_help`` says from where).
    """
    model = p.add_argument_group("generator")
    model.add_argument(
        "--generator", required=required, metavar="MODULE:ATTR",
        help="the generator: a factory function returning an nn.Module, an nn.Module instance, "
        "or a class (a LightningModule class with --checkpoint); MODULE may be a dotted module "
        "importable from the current directory or a path/to/file.py. A plain nn.Module is the "
        "generator as named; in a LightningModule the generator is its "
        f"{'/'.join(GENERATOR_ATTRIBUTES)} submodule.",
    )
    model.add_argument(
        "--checkpoint", metavar="PATH",
        help="checkpoint to load: with a LightningModule class via "
        "cls.load_from_checkpoint(PATH, map_location=DEVICE); with a plain module, its "
        "state_dict (or the checkpoint's 'state_dict' entry)",
    )
    if one_layer:
        model.add_argument(
            "--layer", dest="layers", required=True, nargs=1, metavar="LAYER",
            help="dotted name of the layer, relative to the generator (as in generator.named_modules())",
        )
    else:
        model.add_argument(
            "--layers", required=layers_required, nargs="+", metavar="LAYER",
            help="dotted names of the layers to dissect, relative to the generator (as in "
            "generator.named_modules()), space- or comma-separated, e.g. block3 block4; a name "
            "prefixed with the generator's attribute (generator.block3) is accepted too" + layers_help,
        )
    _add_latent_and_call_options(model)


def _add_latent_and_call_options(model: Any) -> None:
    """``--latent-dim``, ``--latent-shape``, ``--latent-sampler``, ``--generate``, ``--selector``, ``--layout``."""
    model.add_argument(
        "--latent-dim", type=positive_int, metavar="D",
        help="latent size, tried as (D,) then (D, 1, 1); default: the first of "
        f"{', '.join(LATENT_DIM_ATTRIBUTES)} on the model's or the generator's hparams or attributes",
    )
    model.add_argument(
        "--latent-shape", type=_shape, metavar="SHAPE",
        help="full shape of one latent, e.g. 128,1,1 for generators that take (N, 128, 1, 1); "
        "overrides --latent-dim",
    )
    model.add_argument(
        "--latent-sampler", metavar="MODULE:ATTR",
        help="custom latents: a callable (n, torch.Generator) -> latents (a tensor, a tuple or a "
        "dict of tensors, batch first); overrides --latent-dim/--latent-shape",
    )
    model.add_argument(
        "--generate", metavar="MODULE:ATTR",
        help="custom call: a callable (generator, latents) -> images (B, C, H, W); default "
        "generator(latents)",
    )
    model.add_argument(
        "--selector", metavar="INT|NAME|MODULE:ATTR",
        help="which tensor of tuple/dict layer outputs to dissect: an index, a key, or a "
        "MODULE:ATTR callable output -> tensor",
    )
    model.add_argument(
        "--layout", nargs="+", metavar="[LAYER=]SPEC",
        help="where a layer's units are, when its shape cannot tell: channels-first, channels-last "
        "(B, H, W, C), or tokens[:prefix=N][,grid=HxW] (B, N + H*W, D); one SPEC for every layer or "
        "LAYER=SPEC pairs; default: found from each layer's first output",
    )


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """Network Dissection: ``--network`` (in place of ``--generator``) over ``--images``."""
    net = p.add_argument_group(
        "network that reads images (Network Dissection; in place of --generator)",
        "--checkpoint, --layers, --selector, --layout and --batch-size apply to it as to a generator",
    )
    net.add_argument(
        "--network", metavar="MODULE:ATTR",
        help="the network to dissect: a factory function returning an nn.Module, an nn.Module instance, or a "
        "class (a LightningModule class with --checkpoint); --layers are relative to it",
    )
    net.add_argument(
        "--images", metavar="FOLDER",
        help="PNG or JPEG files, read as RGB float tensors in [0, 1] in sorted file-name order",
    )
    net.add_argument(
        "--transform", metavar="MODULE:ATTR",
        help="the network's own preprocessing, a callable images (B, 3, H, W) in [0, 1] -> network input; the "
        "segmenter and the report see the images as read",
    )
    net.add_argument(
        "--segmentations", metavar="FOLDER",
        help="ground truth instead of --segmenter: for each image NAME.*, a single-channel PNG NAME.png whose "
        "pixel values are concept indices (needs --concepts)",
    )
    net.add_argument(
        "--concepts", metavar="FILE",
        help="with --segmentations: one concept name per line, line i naming index i (index 0: unlabeled)",
    )
    net.add_argument(
        "--broden", metavar="DIR",
        help="a Broden-format folder (index.csv, category.csv, label.csv, c_<category>.csv, images/), read as it "
        "is, in place of --images/--segmentations/--concepts",
    )
    net.add_argument(
        "--categories", metavar="CAT,CAT",
        help="with --broden: the categories to read (default: every one of category.csv), e.g. object,part",
    )
    net.add_argument(
        "--unreadable", choices=("warn", "error"), default="warn",
        help="image files that cannot be read: skip each with a warning naming it, or refuse the folder",
    )


def add_dissection_arguments(p: argparse.ArgumentParser) -> None:
    """Segmenter and dissection settings (defaults: :data:`~lightning_dissect.config.CLI_DEFAULTS`)."""
    seg = p.add_argument_group("segmenter")
    seg.add_argument(
        "--segmenter", default="synthetic", metavar="NAME|MODULE:ATTR",
        help="'synthetic' (the exact segmenter of the built-in scene world) or a MODULE:ATTR "
        "segmenter instance or factory (with vocabulary, value_range, __call__)",
    )
    seg.add_argument(
        "--image-size", type=positive_int, default=32, metavar="PX",
        help="image size of the synthetic scene world (>= 16; it segments images of any size)",
    )
    seg.add_argument(
        "--segmentation-size", type=positive_int, metavar="PX",
        help="resolution of the synthetic segmentation; default: the image size",
    )
    _add_config_options(p.add_argument_group("dissection"))


def add_run_arguments(group: Any) -> None:
    """``--quiet`` (the ``progress`` setting) and ``--debug``."""
    group.add_argument(CONFIG_OPTIONS["progress"][0], action="store_true", help=CONFIG_OPTIONS["progress"][2])
    group.add_argument("--debug", action="store_true",
                       help="show the full traceback of errors instead of one line")


