"""Generators written the way third parties write them (tiny sizes, random weights).

* :class:`StyleGenerator` — StyleGAN2-style: a mapping network ``z -> w`` (pixel norm + MLP), a
  synthesis network taking per-layer styles ``(B, L, D)`` and per-layer noise images (each noise
  layer draws its own with ``torch.randn`` when none is given), modulated/demodulated convolutions,
  blocks returning ``(x, rgb)`` with an RGB skip path, output images clamped to ``[0, 1]``.
* :class:`BasicGAN` — Lightning's GAN template: a Linear-only generator (``block(...)`` of
  Linear, BatchNorm1d, LeakyReLU), grayscale ``1 x 28 x 28`` output through ``tanh``, inside a
  LightningModule with ``self.generator`` and ``hparams.latent_dim``.

The module-level factories and callables are what the command line's ``MODULE:ATTR`` options name.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------- StyleGAN-style
Z_DIM = 16
W_DIM = 16
CHANNELS = 8
SIZE = 16  # 4 -> 8 -> 16


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class MappingNetwork(nn.Module):
    """``z -> w``: pixel norm, then an MLP with leaky ReLUs."""

    def __init__(self, z_dim: int = Z_DIM, w_dim: int = W_DIM, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()]
        for i in range(num_layers):
            layers += [nn.Linear(z_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class ModulatedConv2d(nn.Module):
    """A convolution whose input channels are scaled by an affine map of the style, then demodulated."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.affine = nn.Linear(w_dim, in_ch)
        nn.init.ones_(self.affine.bias)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x, style):
        b, in_ch, h, w = x.shape
        s = self.affine(style).view(b, 1, in_ch, 1, 1)
        weight = self.scale * self.weight * s  # (B, out, in, k, k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        out_ch = weight.shape[1]
        weight = weight.reshape(b * out_ch, in_ch, *weight.shape[-2:])
        out = F.conv2d(x.reshape(1, b * in_ch, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, out_ch, h, w)


class NoiseInjection(nn.Module):
    """Adds a learned multiple of a noise image; draws the noise itself when none is given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x, noise=None):
        if noise is None:
            b, _, h, w = x.shape
            noise = torch.randn(b, 1, h, w, device=x.device, dtype=x.dtype)
        return x + self.weight * noise


class StyledBlock(nn.Module):
    """(Upsample,) modulated conv, noise, activation, and a toRGB added to the upsampled skip: ``(x, rgb)``."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))
        self.act = nn.LeakyReLU(0.2)
        self.to_rgb = ModulatedConv2d(out_ch, 3, 1, w_dim, demodulate=False)

    def forward(self, x, rgb, style, noise=None):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.act(self.noise(self.conv(x, style), noise) + self.bias)
        skip = self.to_rgb(x, style)
        if rgb is not None:
            skip = skip + F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        return x, skip


class SynthesisNetwork(nn.Module):
    """Constant 4x4 input, one styled block per resolution; ``forward(styles (B, L, D), noise=[...])``."""

    def __init__(self, w_dim: int = W_DIM, channels: int = CHANNELS, size: int = SIZE) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
        n = int(math.log2(size)) - 1  # 4x4 .. size x size
        self.blocks = nn.ModuleList(StyledBlock(channels, channels, w_dim, upsample=i > 0) for i in range(n))
        self.num_ws = n
        self.resolutions = [4 * 2**i for i in range(n)]

    def forward(self, styles, noise=None):
        if styles.ndim != 3 or styles.shape[1] != self.num_ws:
            raise ValueError(f"styles must be (B, {self.num_ws}, D), got {tuple(styles.shape)}")
        noise = noise if noise is not None else [None] * self.num_ws
        x = self.const.expand(styles.shape[0], -1, -1, -1)
        rgb = None
        for i, block in enumerate(self.blocks):
            x, rgb = block(x, rgb, styles[:, i], noise[i])
        return rgb


class StyleGenerator(nn.Module):
    """``forward(z, noise=None, truncation=1.0)``: mapping, broadcast ``w`` to every layer, synthesis.

    Images are ``(B, 3, SIZE, SIZE)`` clamped to ``[0, 1]``.
    """

    def __init__(self, z_dim: int = Z_DIM, w_dim: int = W_DIM, channels: int = CHANNELS, size: int = SIZE) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.mapping = MappingNetwork(z_dim, w_dim)
        self.synthesis = SynthesisNetwork(w_dim, channels, size)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, noise=None, truncation: float = 1.0):
        w = self.mapping(z)
        if truncation != 1.0:
            w = self.w_avg + truncation * (w - self.w_avg)
        styles = w[:, None].expand(-1, self.synthesis.num_ws, -1)
        rgb = self.synthesis(styles, noise)
        return (rgb * 0.5 + 0.5).clamp(0, 1)


def stylegan(seed: int = 0) -> StyleGenerator:
    """A :class:`StyleGenerator` with weights drawn from ``seed`` (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StyleGenerator()


def style_sampler(n: int, generator: torch.Generator) -> dict:
    """Structured latents: ``{"z": (n, Z_DIM), "noise": [(n, 1, r, r) per block]}``."""
    z = torch.randn(n, Z_DIM, generator=generator)
    noise = [torch.randn(n, 1, r, r, generator=generator) for r in (4 * 2**i for i in range(int(math.log2(SIZE)) - 1))]
    return {"z": z, "noise": noise}


def style_generate(generator: StyleGenerator, latents: dict):
    """``generate=`` for :func:`style_sampler`: unpack ``z`` and the per-layer noise images."""
    return generator(latents["z"], noise=list(latents["noise"]))


def style_tuple_sampler(n: int, generator: torch.Generator) -> tuple:
    """Structured latents as a tuple ``(z, noise_4, noise_8, noise_16)``."""
    d = style_sampler(n, generator)
    return (d["z"], *d["noise"])


def style_tuple_generate(generator: StyleGenerator, latents: tuple):
    """``generate=`` for :func:`style_tuple_sampler`."""
    z, *noise = latents
    return generator(z, noise=noise)


class DictBlock(nn.Module):
    """A block returning ``{"features": x, "rgb": rgb}`` (a dict output)."""

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.to_rgb = nn.Conv2d(channels, 3, 1)

    def forward(self, x):
        x = self.act(self.conv(x))
        return {"features": x, "rgb": self.to_rgb(x)}


class DictGenerator(nn.Module):
    """``z -> fc -> 4x4 -> up -> DictBlock -> up -> DictBlock``; the image is the last block's ``rgb`` in [-1, 1]."""

    def __init__(self, z_dim: int = Z_DIM, channels: int = CHANNELS) -> None:
        super().__init__()
        self.channels = channels
        self.fc = nn.Linear(z_dim, channels * 16)
        self.block1 = DictBlock(channels)
        self.block2 = DictBlock(channels)

    def forward(self, z):
        x = self.fc(z).view(-1, self.channels, 4, 4)
        x = self.block1(F.interpolate(x, scale_factor=2))["features"]
        out = self.block2(F.interpolate(x, scale_factor=2))
        return torch.tanh(out["rgb"])


# ---------------------------------------------------------------------- Lightning's GAN template
class Generator(nn.Module):
    """Linear-only generator of Lightning's GAN template: ``z -> (B, *img_shape)`` in [-1, 1]."""

    def __init__(self, latent_dim: int = 8, img_shape: tuple[int, int, int] = (1, 28, 28), hidden: int = 16) -> None:
        super().__init__()
        self.img_shape = img_shape

        def block(in_feat: int, out_feat: int, normalize: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(in_feat, out_feat)]
            if normalize:
                layers.append(nn.BatchNorm1d(out_feat, 0.8))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        self.model = nn.Sequential(
            *block(latent_dim, hidden, normalize=False),
            *block(hidden, 2 * hidden),
            nn.Linear(2 * hidden, int(math.prod(img_shape))),
            nn.Tanh(),
        )

    def forward(self, z):
        img = self.model(z)
        return img.view(img.size(0), *self.img_shape)


class Discriminator(nn.Module):
    def __init__(self, img_shape: tuple[int, int, int] = (1, 28, 28), hidden: int = 16) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(int(math.prod(img_shape)), hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, 1),
        )

    def forward(self, img):
        return self.model(img.flatten(1))


class BasicGAN(pl.LightningModule):
    """Lightning's GAN template (manual optimisation, two optimizers), at tiny sizes."""

    def __init__(self, channels: int = 1, width: int = 28, height: int = 28, latent_dim: int = 8,
                 lr: float = 2e-4, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        shape = (channels, width, height)
        self.generator = Generator(latent_dim=self.hparams.latent_dim, img_shape=shape)
        self.discriminator = Discriminator(img_shape=shape)

    def forward(self, z):
        return self.generator(z)

    def training_step(self, batch):
        imgs = batch[0]
        opt_g, opt_d = self.optimizers()
        z = torch.randn(imgs.shape[0], self.hparams.latent_dim).type_as(imgs)
        valid = torch.ones(imgs.size(0), 1).type_as(imgs)
        fake = torch.zeros(imgs.size(0), 1).type_as(imgs)

        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z)), valid)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()

        real_loss = F.binary_cross_entropy_with_logits(self.discriminator(imgs), valid)
        fake_loss = F.binary_cross_entropy_with_logits(self.discriminator(self(z).detach()), fake)
        d_loss = (real_loss + fake_loss) / 2
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def configure_optimizers(self):
        lr = self.hparams.lr
        return [torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
                torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))]


class SharedActivationGenerator(nn.Module):
    """Like :class:`Generator`, but one ``nn.LeakyReLU`` instance is reused after both hidden layers."""

    def __init__(self, latent_dim: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(latent_dim, 16)
        self.fc2 = nn.Linear(16, 16)
        self.act = nn.LeakyReLU(0.2)
        self.out = nn.Linear(16, 28 * 28)

    def forward(self, z):
        return torch.tanh(self.out(self.act(self.fc2(self.act(self.fc1(z)))))).view(-1, 1, 28, 28)


class TwoInputGenerator(nn.Module):
    """A generator called as ``G(z, labels)`` (conditional): it needs two inputs."""

    def __init__(self, latent_dim: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.fc = nn.Linear(latent_dim, 3 * 8 * 8)

    def forward(self, z, labels):
        return torch.tanh(self.fc(z * self.embed(labels))).view(-1, 3, 8, 8)


class ConditionalGAN(nn.Module):
    """A wrapper module whose generator sits in ``.G`` (found by the usual names) but needs two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.latent_dim = 8
        self.G = TwoInputGenerator(self.latent_dim)
        self.D = nn.Linear(3 * 8 * 8, 1)


def conditional_generate(generator: TwoInputGenerator, z):
    """``generate=`` for :class:`ConditionalGAN`: every latent gets class 0."""
    return generator(z, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))


def conditional_wrapper_generate(gan: ConditionalGAN, z):
    """``generate=`` for :class:`ConditionalGAN` named as it is: its ``G`` with class 0 for every latent."""
    return conditional_generate(gan.G, z)


def segmenter_01():
    """The scene-world segmenter taking ``[0, 1]`` images (every pixel labelled: random weights paint anything)."""
    from lightning_dissect.segmenters import SceneWorld, SyntheticSceneSegmenter, adapt_input

    return adapt_input(SyntheticSceneSegmenter(SceneWorld(16), max_distance=float("inf")), value_range=(0, 1))
