"""A folder of PNG/JPEG images (and, optionally, their segmentations) as a map-style dataset.

Files are read with Pillow (a dependency of the package, ``pip install pillow`` if it was removed) as RGB
float tensors in ``[0, 1]`` (torchvision's convention), in sorted file-name order. Every file is
opened when the folder is listed (headers only, no decoding), so an unreadable file or a size that
differs is reported before any long work.

Segmentations follow one rule: for each image ``NAME.*`` a single-channel PNG ``NAME.png`` in the
segmentation folder whose pixel values are concept indices, named by a concepts file with one name
per line (line ``i`` names index ``i``; index 0 is "unlabeled").
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_dissect._utils.checks import argument_name
from lightning_dissect.vocabulary import ConceptVocabulary

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "read_concepts"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes read as images (any case)."""


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - Pillow is installed in CI
        raise ImportError(
            "reading an image folder needs Pillow, a dependency of lightning-dissect: pip install 'pillow>=10.1'"
        ) from err
    return Image


def read_concepts(path: str | Path, argument: str = "concepts") -> ConceptVocabulary:
    """A vocabulary from a text file with one concept name per line (line 0: "unlabeled").

    Every concept gets the category ``"concept"``; blank lines at the end are ignored.

    Examples:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "concepts.txt")
        ...     _ = open(path, "w").write("unlabeled\\nsky\\ntree\\n")
        ...     read_concepts(path).names
        ('unlabeled', 'sky', 'tree')
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{argument_name(argument)}: file not found: {file}")
    names = file.read_text(encoding="utf-8").rstrip("\n").split("\n")
    names = [n.strip() for n in names]
    if len(names) < 2 or any(not n for n in names):
        raise ValueError(
            f"{argument_name(argument)} {file}: give one non-empty concept name per line, line 1 for index 0 "
            "(\"unlabeled\") and at least one concept after it"
        )
    return ConceptVocabulary(tuple(names), ("none",) + ("concept",) * (len(names) - 1))


class ImageFolder(Dataset):
    """The PNG/JPEG images of ``folder`` in sorted file-name order, optionally with segmentations.

    Args:
        folder: The image folder (not searched recursively).
        segmentations: Folder of single-channel ``NAME.png`` label maps, one per image ``NAME.*``.
        on_unreadable: ``"warn"``: skip files that cannot be read, with a warning naming each;
            ``"error"``: refuse the folder.
        argument: What to call ``folder`` in errors (``--images`` on the command line).

    Items are ``(C, H, W)`` float images in ``[0, 1]``, or ``(image, segmentation)`` pairs with
    ``segmentations`` (int64 ``(H', W')``). :attr:`files` lists the images read, in order.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     Image.new("RGB", (4, 2), (255, 0, 0)).save(f"{tmp}/b.png")
        ...     Image.new("RGB", (4, 2), (0, 0, 255)).save(f"{tmp}/a.png")
        ...     folder = ImageFolder(tmp)
        ...     [f.name for f in folder.files], folder[0][:, 0, 0].tolist()
        (['a.png', 'b.png'], [0.0, 0.0, 1.0])
    """

    def __init__(
        self,
        folder: str | Path,
        segmentations: str | Path | None = None,
        *,
        on_unreadable: str = "warn",
        argument: str = "folder",
    ) -> None:
        if on_unreadable not in ("warn", "error"):
            raise ValueError(f"`on_unreadable` must be 'warn' or 'error', got {on_unreadable!r}")
        image_lib = _pillow()
        root = Path(folder)
        if not root.is_dir():
            raise ValueError(f"{argument_name(argument)}: {root} is not a folder")
        candidates = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        readable: list[Path] = []
        unreadable: list[str] = []
        sizes: dict[tuple[int, int], list[str]] = {}
        for path in candidates:
            try:
                with image_lib.open(path) as image:
                    image.verify()  # headers and structure, without decoding the pixels
                    size = image.size
            except Exception as err:  # noqa: BLE001 - any unreadable file is reported by name
                unreadable.append(f"{path.name} ({type(err).__name__}: {err})")
                continue
            readable.append(path)
            sizes.setdefault(size, []).append(path.name)
        if unreadable:
            if on_unreadable == "error":
                raise ValueError(f"{argument_name(argument)} {root} has unreadable files: {'; '.join(unreadable)}")
            for line in unreadable:
                warnings.warn(f"{argument_name(argument)}: skipping unreadable file {line}", UserWarning, stacklevel=2)
        if not readable:
            raise ValueError(f"{argument_name(argument)} {root} holds no readable PNG or JPEG images")
        if len(sizes) > 1:
            listed = "; ".join(f"{w}×{h}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                               for (w, h), names in sorted(sizes.items()))
            raise ValueError(
                f"{argument_name(argument)} {root} holds images of different sizes ({listed}); resize them to one"
            )
        self.files = readable
        self.segmentation_files: list[Path] | None = None
        if segmentations is not None:
            seg_root = Path(segmentations)
            if not seg_root.is_dir():
                raise ValueError(f"`segmentations`: {seg_root} is not a folder")
            wanted = [seg_root / f"{p.stem}.png" for p in readable]
            missing = [w.name for w in wanted if not w.is_file()]
            if missing:
                raise ValueError(
                    f"`segmentations` {seg_root} lacks {len(missing)} label map(s) for the images: "
                    f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}"
                )
            self.segmentation_files = wanted

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, Tensor]:
        image = _read(self.files[index], "RGB")
        pixels = image.permute(2, 0, 1).float().div_(255.0)
        if self.segmentation_files is None:
            return pixels
        labels = _read(self.segmentation_files[index], None)
        if labels.ndim == 3:
            raise ValueError(
                f"`segmentations`: {self.segmentation_files[index].name} has {labels.shape[-1]} channels; a label map "
                "is a single-channel PNG of concept indices"
            )
        return pixels, labels.long()


def _read(path: Path, mode: str | None) -> Tensor:
    """Decode one image file to a ``(H, W)`` or ``(H, W, C)`` tensor (uint8, or int32 for 16-bit PNGs)."""
    import numpy as np

    image_lib = _pillow()
    with image_lib.open(path) as image:
        if mode is not None:
            image = image.convert(mode)
        array = np.array(image)  # a palette PNG ("P") gives its indices: the labels themselves
    if array.dtype == np.uint16 or array.dtype.kind == "i":
        array = array.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(array))
