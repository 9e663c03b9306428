"""A procedural world of small outdoor scenes with exact ground-truth segmentations.

:class:`SceneWorld` renders seeded RGB scenes — sky, sun, clouds, mountains, grass or soil, water,
roads, fences, trees (trunk + foliage) and houses (wall, roof, windows, door) — with the concept of
every pixel known exactly. Each concept is painted in a fixed *base colour* (its row of
:attr:`SceneWorld.palette`) plus bounded texture, so the colour of a pixel identifies its concept
(:class:`~lightning_dissect.segmenters.synthetic.SyntheticSceneSegmenter` relies on this) while a
generator still has to learn the scene structure: horizons, perspective, occlusion, parts inside
wholes.

Rendering is vectorised over the batch with tensor masks; sample ``i`` of ``render(n, seed)``
depends only on ``(seed, i)`` (each sample draws its random numbers from its own
``torch.Generator``, and the drawing uses only exactly rounded elementwise operations), so any
sample can be rendered on its own — datasets are indexable and bit-identical across runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._utils.checks import check_int
from ..vocabulary import ConceptVocabulary

__all__ = ["SceneWorld", "TEXTURE_AMPLITUDE", "WORLD_CONCEPTS"]

#: ``(name, category, parent name or None, base colour in 0..255)`` for every concept.
WORLD_CONCEPTS: tuple[tuple[str, str, str | None, tuple[int, int, int]], ...] = (
    ("unlabeled", "none", None, (128, 128, 128)),
    ("sky", "material", None, (110, 170, 235)),
    ("cloud", "object", None, (245, 245, 250)),
    ("sun", "object", None, (255, 215, 40)),
    ("mountain", "object", None, (125, 110, 150)),
    ("grass", "material", None, (80, 170, 50)),
    ("soil", "material", None, (150, 100, 55)),
    ("water", "material", None, (30, 75, 170)),
    ("road", "object", None, (85, 85, 90)),
    ("fence", "object", None, (250, 140, 215)),
    ("tree", "object", None, (0, 150, 130)),
    ("trunk", "part", "tree", (85, 45, 20)),
    ("foliage", "part", "tree", (25, 95, 35)),
    ("house", "object", None, (255, 255, 150)),
    ("wall", "part", "house", (215, 195, 135)),
    ("roof", "part", "house", (175, 35, 40)),
    ("window", "part", "house", (175, 240, 255)),
    ("door", "part", "house", (75, 20, 120)),
)

#: Largest deviation of a rendered pixel from its concept's base colour, per channel, in [-1, 1]
#: units: per-image concept tint (0.03) + vertical shading (0.02) + per-pixel noise (0.03).
TEXTURE_AMPLITUDE = 0.08
_TINT, _SHADE, _NOISE = 0.03, 0.02, 0.03

_NUM_PARAMS = 160  # uniform numbers per sample for the layout (fixed: keeps samples independent)
_MAX_OBJECTS = 3  # houses and trees, each

# Vertical shading direction per concept (+1: brighter at the top of the image).
_SHADE_SIGN = {"sky": -1.0, "water": 1.0, "grass": -1.0, "soil": -1.0, "mountain": 1.0,
               "road": -1.0, "wall": 1.0, "foliage": 1.0}


def _sample_seed(seed: int, index: int) -> int:
    """Return a 64-bit seed for sample ``index`` of stream ``seed`` (splitmix64 finaliser)."""
    mask = (1 << 64) - 1
    z = (int(seed) * 0x9E3779B97F4A7C15 + (int(index) + 1) * 0xD1B54A32D192ED03) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def _wave(x: Tensor) -> Tensor:
    """Return a smooth periodic wave in [-1, 1] (period 1) from exactly rounded operations only."""
    f = x - torch.floor(x)
    return 8.0 * f * (1.0 - f) - 1.0  # parabolic arcs; continuous, no transcendental functions


class _Params:
    """Hands out columns of the per-sample uniform numbers, shaped to broadcast over pixels."""

    def __init__(self, u: Tensor) -> None:
        self.u = u
        self.i = 0

    def __call__(self, low: float = 0.0, high: float = 1.0) -> Tensor:
        if self.i >= self.u.shape[1]:  # pragma: no cover - guarded by tests
            raise RuntimeError("SceneWorld: layout needs more random numbers than drawn")
        col = self.u[:, self.i].view(-1, 1, 1)
        self.i += 1
        return low + (high - low) * col


class SceneWorld:
    """Seeded generator of small RGB scenes with exact ground-truth labels.

    Args:
        image_size: Side of the square images, at least 16 (32 and 64 are the usual sizes).
        chunk_size: Samples rendered per vectorised chunk (bounds memory).

    Attributes:
        vocabulary: The world's :class:`ConceptVocabulary` (label 0 = ``"unlabeled"``; parts link
            to their wholes: trunk/foliage → tree, wall/roof/window/door → house).
        palette: Float ``(num_concepts, 3)`` base colour of every concept in [-1, 1] (row 0,
            "unlabeled", is mid-grey and never rendered). Painting ``palette[k]`` into pixels makes
            them segment as concept ``k``.
        texture_amplitude: Per-channel bound on ``|pixel - palette[label]|`` in rendered images.

    Examples:
        >>> world = SceneWorld(32)
        >>> images, labels = world.render(4, seed=0)
        >>> images.shape, images.dtype, labels.shape, labels.dtype
        (torch.Size([4, 3, 32, 32]), torch.float32, torch.Size([4, 32, 32]), torch.int64)
        >>> bool(images.min() >= -1 and images.max() <= 1), bool((labels > 0).all())
        (True, True)
        >>> world.vocabulary.names[world.vocabulary.parents[world.vocabulary.index("window")]]
        'house'

    """

    def __init__(self, image_size: int = 32, chunk_size: int = 256) -> None:
        image_size = check_int(image_size, "image_size", minimum=16)
        self.image_size = image_size
        self.chunk_size = max(1, int(chunk_size))
        names = tuple(c[0] for c in WORLD_CONCEPTS)
        self.vocabulary = ConceptVocabulary(
            names=names,
            categories=tuple(c[1] for c in WORLD_CONCEPTS),
            unlabeled_index=0,
            parents=tuple(None if c[2] is None else names.index(c[2]) for c in WORLD_CONCEPTS),
        )
        rgb = torch.tensor([c[3] for c in WORLD_CONCEPTS], dtype=torch.float32)
        self.palette = rgb / 127.5 - 1.0
        self.palette[0] = 0.0
        self.texture_amplitude = TEXTURE_AMPLITUDE
        self._parent_table = self.vocabulary.parent_table()
        self._shade = torch.tensor([_SHADE_SIGN.get(n, 0.0) for n in names])
        self._ids = {n: i for i, n in enumerate(names)}

    # ------------------------------------------------------------------ public API
    @property
    def num_concepts(self) -> int:
        """Number of labels, including ``"unlabeled"``."""
        return self.vocabulary.num_concepts

    def min_palette_distance(self) -> float:
        """Smallest Euclidean distance between two concepts' base colours (row 0 excluded)."""
        p = self.palette[1:]
        d = torch.cdist(p, p) + torch.eye(len(p)) * 1e9
        return float(d.min())

    def render(self, n: int, seed: int = 0, start: int = 0) -> tuple[Tensor, Tensor]:
        """Render samples ``start, ..., start + n - 1`` of the stream ``seed``.

        Args:
            n: Number of samples.
            seed: Stream seed; the same seed gives bit-identical output.
            start: Index of the first sample (sample ``i`` depends only on ``(seed, i)``).

        Returns:
            ``(images, labels)``: float32 ``(n, 3, S, S)`` in [-1, 1] and int64 ``(n, S, S)``
            holding the finest concept of each pixel (a window pixel is ``"window"``).

        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}.")
        return self.render_indices(range(start, start + n), seed)

    def render_indices(self, indices: Sequence[int], seed: int = 0) -> tuple[Tensor, Tensor]:
        """Render the samples with the given indices of the stream ``seed``.

        Examples:
            >>> world = SceneWorld(16)
            >>> a, _ = world.render(5, seed=1)
            >>> b, _ = world.render_indices([4, 2], seed=1)
            >>> torch.equal(a[[4, 2]], b)
            True

        """
        indices = [int(i) for i in indices]
        s = self.image_size
        images = torch.empty(len(indices), 3, s, s)
        labels = torch.empty(len(indices), s, s, dtype=torch.int64)
        for c in range(0, len(indices), self.chunk_size):
            idx = indices[c : c + self.chunk_size]
            u, noise = self._draw(idx, seed)
            img, lab = self._render_chunk(u, noise)
            images[c : c + len(idx)] = img
            labels[c : c + len(idx)] = lab
        return images, labels

    def multilabel(self, labels: Tensor) -> Tensor:
        """Part and whole label of every pixel: ``(n, 2, S, S)``.

        Channel 0 is ``labels`` (the finest concept); channel 1 is that concept's whole (its
        parent: ``"house"`` for a window pixel), or 0 ("unlabeled") where it has none.

        Examples:
            >>> world = SceneWorld(16)
            >>> v = world.vocabulary
            >>> lab = torch.tensor([[[v.index("window"), v.index("sky")]]])
            >>> [[v.names[int(i)] for i in px] for px in world.multilabel(lab)[0, :, 0].T]
            [['window', 'house'], ['sky', 'unlabeled']]

        """
        table = self._parent_table.to(labels.device)
        return torch.stack([labels, table[labels]], dim=1)

    def __repr__(self) -> str:
        return f"SceneWorld(image_size={self.image_size}, concepts={self.num_concepts})"

    # ------------------------------------------------------------------ internals
    def _draw(self, indices: Sequence[int], seed: int) -> tuple[Tensor, Tensor]:
        s = self.image_size
        u = torch.empty(len(indices), _NUM_PARAMS + 3 * self.num_concepts)
        noise = torch.empty(len(indices), 3, s, s)
        g = torch.Generator()
        for k, i in enumerate(indices):
            g.manual_seed(_sample_seed(seed, i))
            torch.rand(u.shape[1], generator=g, out=u[k])
            torch.rand(3, s, s, generator=g, out=noise[k])
        return u, noise

    def _render_chunk(self, u: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        n, s = u.shape[0], self.image_size
        r = _Params(u[:, :_NUM_PARAMS])  # every stage draws its parameters from r, in this order
        coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        x = coords.view(1, 1, s)  # horizontal position in (0, 1)
        y = coords.view(1, s, 1)  # vertical position in (0, 1), downwards

        # --- sky and horizon
        h = r(0.35, 0.65)
        tilt = r(-0.08, 0.08)
        amp, freq, phase = r(0.0, 0.04), r(0.5, 2.5), r()
        horizon = h + tilt * (x - 0.5) + amp * _wave(freq * x + phase)  # (n, 1, s)
        below = y >= horizon
        labels = torch.full((n, s, s), self._ids["sky"], dtype=torch.int64)
        labels = self._paint_sky(r, x, y, h, labels)
        labels = self._paint_ground(r, x, y, h, below, labels)
        labels = self._paint_objects(r, x, y, h, labels)
        return self._colour(u, noise, y, labels), labels

    def _paint(self, lab: Tensor, mask: Tensor, name: str) -> Tensor:
        return torch.where(mask, torch.full_like(lab, self._ids[name]), lab)

    def _paint_sky(self, r: _Params, x: Tensor, y: Tensor, h: Tensor, labels: Tensor) -> Tensor:
        """Sun, mountains and clouds, back to front."""
        # --- sun (behind mountains and clouds)
        present, cx, cy, rad = r(), r(0.1, 0.9), r(), r(0.04, 0.09)
        cy = 0.06 + (h - 0.18).clamp(min=0.0) * cy
        disk = (x - cx) ** 2 + (y - cy) ** 2 < rad * rad
        labels = self._paint(labels, disk & (present < 0.45), "sun")

        # --- mountains (up to two peaks)
        for _ in range(2):
            present, px, height, slope = r(), r(), r(0.08, 0.3), r(0.5, 1.6)
            rough = r(0.0, 0.03)
            top = (h - height).clamp(min=0.04)
            ridge = top + slope * (x - px).abs() + rough * _wave(6.0 * x + px)
            labels = self._paint(labels, (y >= ridge) & (present < 0.4), "mountain")

        # --- clouds (three lobes each, up to three clouds)
        for _ in range(3):
            present, cx, cy, w, aspect = r(), r(-0.1, 1.1), r(), r(0.07, 0.18), r(0.3, 0.5)
            cy = 0.04 + (h - 0.12).clamp(min=0.0) * cy
            hh = w * aspect
            cloud = ((x - cx) / w) ** 2 + ((y - cy) / hh) ** 2 < 1.0
            for side in (-1.0, 1.0):
                lx = cx + side * 0.7 * w
                ly = cy + 0.35 * hh
                cloud |= ((x - lx) / (0.6 * w)) ** 2 + ((y - ly) / (0.65 * hh)) ** 2 < 1.0
            labels = self._paint(labels, cloud & (present < 0.45), "cloud")
        return labels

    def _paint_ground(self, r: _Params, x: Tensor, y: Tensor, h: Tensor, below: Tensor, labels: Tensor) -> Tensor:
        """Grass or soil with a patch of the other, then water, road and fence."""
        ids = self._ids
        n, s = labels.shape[0], self.image_size
        soil_ground = r() < 0.35
        ground = torch.where(soil_ground, ids["soil"], ids["grass"])
        labels = torch.where(below, ground.expand(n, s, s), labels)
        present, cx, cy, w = r(), r(), r(), r(0.1, 0.3)
        cy = h + (1.0 - h) * (0.2 + 0.7 * cy)
        patch = ((x - cx) / w) ** 2 + ((y - cy) / (0.35 * w)) ** 2 < 1.0
        other = torch.where(soil_ground, ids["grass"], ids["soil"])
        labels = torch.where(patch & below & (present < 0.3), other.expand(n, s, s), labels)

        # --- water: a band across the ground
        present, pos, thick, wamp, wfreq = r(), r(0.05, 0.6), r(0.1, 0.3), r(0.0, 0.03), r(1, 3)
        wphase = r()
        top = h + (1.0 - h) * pos + wamp * _wave(wfreq * x + wphase)
        bottom = top + (1.0 - h) * thick + wamp * _wave(wfreq * x + wphase + 0.37)
        water = (y >= top) & (y < bottom) & below & (present < 0.35)
        labels = self._paint(labels, water, "water")

        # --- road: perspective strip from a vanishing point on the horizon
        present, u0, u1, wb = r(), r(0.25, 0.75), r(-0.2, 1.2), r(0.1, 0.25)
        t = ((y - h) / (1.0 - h)).clamp(min=0.0)
        centre = u0 + (u1 - u0) * t
        half = 0.004 + wb * t
        road = ((x - centre).abs() < half) & below & (present < 0.4)
        labels = self._paint(labels, road, "road")

        # --- fence: posts and two rails along a line on the ground
        present, pos, fh, spacing = r(), r(0.1, 0.6), r(0.06, 0.12), r(0.05, 0.1)
        fu0, fu1, offset = r(-0.2, 0.5), r(0.5, 1.2), r()
        base = h + (1.0 - h) * pos
        span = (x >= fu0) & (x < fu1) & (y < base) & (y >= base - fh)
        posts = (x / spacing + offset) - torch.floor(x / spacing + offset) < 0.3
        rails = ((y - (base - 0.8 * fh)).abs() < 0.12 * fh) | (
            (y - (base - 0.4 * fh)).abs() < 0.12 * fh
        )
        return self._paint(labels, span & (posts | rails) & (present < 0.25), "fence")

    def _paint_objects(self, r: _Params, x: Tensor, y: Tensor, h: Tensor, labels: Tensor) -> Tensor:
        """Trees and houses, composed back to front with a depth buffer."""
        slots_depth, slots_label = [], []
        n_houses = torch.floor(r(0.0, _MAX_OBJECTS + 1 - 1e-6))
        n_trees = torch.floor(r(0.0, _MAX_OBJECTS + 1 - 1e-6))
        for k in range(_MAX_OBJECTS):
            d, lab = self._house(r, x, y, h, active=n_houses > k)
            slots_depth.append(d)
            slots_label.append(lab)
            d, lab = self._tree(r, x, y, h, active=n_trees > k)
            slots_depth.append(d)
            slots_label.append(lab)
        depth = torch.stack(slots_depth, 1)  # (n, K, s, s); -1 where the object is absent
        best_depth, best = depth.max(1)
        obj_label = torch.stack(slots_label, 1).gather(1, best.unsqueeze(1)).squeeze(1)
        return torch.where(best_depth >= 0, obj_label, labels)

    def _colour(self, u: Tensor, noise: Tensor, y: Tensor, labels: Tensor) -> Tensor:
        """Base colour + per-image tint + vertical shading + per-pixel noise."""
        n = labels.shape[0]
        tint = (u[:, _NUM_PARAMS:].view(n, self.num_concepts, 3) * 2.0 - 1.0) * _TINT
        colour = self.palette[labels] + tint[torch.arange(n).view(n, 1, 1), labels]
        shade = self._shade[labels] * (_SHADE * (1.0 - 2.0 * y))
        colour = colour + shade.unsqueeze(-1)
        images = colour.permute(0, 3, 1, 2) + (noise * 2.0 - 1.0) * _NOISE
        return images.clamp_(-1.0, 1.0).contiguous()

    def _house(self, r: _Params, x: Tensor, y: Tensor, h: Tensor, active: Tensor):
        ids = self._ids
        pos, cx, size, aspect, roof_h = r(), r(0.05, 0.95), r(0.8, 1.3), r(0.55, 0.95), r(0.3, 0.6)
        door_dx, win_l, win_r, overhang = r(-0.25, 0.25), r(), r(), r(0.0, 0.15)
        base = h + (1.0 - h) * (0.1 + 0.88 * pos)
        scale = 0.3 + 0.7 * (base - h) / (1.0 - h)
        w = 0.26 * scale * size
        hgt = w * aspect
        wall_top = base - hgt
        wall = ((x - cx).abs() < 0.5 * w) & (y < base) & (y >= wall_top)
        rh = w * roof_h
        tr = ((y - (wall_top - rh)) / rh).clamp(0.0, 1.0)  # 0 at the ridge, 1 at the eaves
        roof = ((x - cx).abs() < (0.5 + overhang) * w * tr) & (y >= wall_top - rh) & (y < wall_top)
        lab = torch.where(roof, ids["roof"], ids["wall"]).expand(h.shape[0], y.shape[1], x.shape[2])
        ws = 0.2 * w
        wy = base - 0.68 * hgt
        for side, present in ((-1.0, win_l), (1.0, win_r)):
            wx = cx + side * 0.28 * w
            win = ((x - wx).abs() < 0.5 * ws) & ((y - wy).abs() < 0.5 * ws) & (present < 0.8)
            lab = torch.where(win, ids["window"], lab)
        dx = cx + door_dx * w
        door = ((x - dx).abs() < 0.11 * w) & (y < base) & (y >= base - 0.5 * hgt)
        lab = torch.where(door & wall, ids["door"], lab)
        depth = torch.where((wall | roof) & active, base, torch.full_like(base, -1.0))
        return depth.expand_as(lab), lab

    def _tree(self, r: _Params, x: Tensor, y: Tensor, h: Tensor, active: Tensor):
        ids = self._ids
        pos, cx, size, tw, th, conifer, stretch = (
            r(), r(0.02, 0.98), r(0.8, 1.4), r(0.2, 0.35), r(0.5, 1.1), r(), r(1.0, 1.4)
        )
        base = h + (1.0 - h) * (0.05 + 0.93 * pos)
        scale = 0.3 + 0.7 * (base - h) / (1.0 - h)
        rad = 0.1 * scale * size
        trunk_top = base - th * rad
        trunk = ((x - cx).abs() < 0.5 * tw * rad) & (y < base) & (y >= trunk_top - 0.5 * rad)
        ry = rad * stretch
        round_crown = ((x - cx) / rad) ** 2 + ((y - (trunk_top - 0.8 * ry)) / ry) ** 2 < 1.0
        apex = trunk_top - 2.6 * rad
        tc = ((y - apex) / (2.6 * rad)).clamp(0.0, 1.0)
        cone = ((x - cx).abs() < 1.0 * rad * tc) & (y >= apex) & (y < trunk_top + 0.2 * rad)
        crown = torch.where(conifer < 0.35, cone, round_crown)
        lab = torch.where(crown, ids["foliage"], ids["trunk"]).expand(
            h.shape[0], y.shape[1], x.shape[2]
        )
        depth = torch.where((trunk | crown) & active, base, torch.full_like(base, -1.0))
        return depth.expand_as(lab), lab
