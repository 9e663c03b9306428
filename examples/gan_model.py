"""A small DCGAN for the synthetic scene world, written as a Lightning module.

It follows the conventions of Lightning's own GAN example, which is what
:class:`lightning_dissect.DissectionCallback` looks for by default:

* ``self.generator`` is the generator (an ``nn.Module``), ``self.discriminator`` the discriminator;
* ``self.hparams.latent_dim`` is the size of a latent, and latents are shaped ``(N, latent_dim)``
  (the generator reshapes them to ``(N, latent_dim, 1, 1)`` itself);
* manual optimisation with two optimizers (``self.automatic_optimization = False``).

Layers to dissect (all outputs are taken *after* the block's activation)::

    generator.layer1   z -> (B, 256,  4,  4)   ConvTranspose 4x4 + BatchNorm + ReLU
    generator.layer2        (B, 128,  8,  8)   ConvTranspose 4x4 stride 2 + BatchNorm + ReLU
    generator.layer3        (B,  64, 16, 16)   ConvTranspose 4x4 stride 2 + BatchNorm + ReLU
    generator.layer4        (B,  32, 32, 32)   ConvTranspose 4x4 stride 2 + BatchNorm + ReLU
    generator.output        (B,   3, 32, 32)   Conv 3x3 + Tanh (images in [-1, 1])

(the widths are the defaults, ``channels=(256, 128, 64, 32)``; the number of stride-2 blocks follows
from ``image_size``: 32 -> 3, 64 -> 4.) Dissecting ``generator`` directly, the layer names are
``layer1`` ... ``layer4``.

**Step axis.** With manual optimisation every ``optimizer.step()`` advances ``trainer.global_step``,
so with the two optimizers here ``global_step`` advances **twice per training batch** (once for the
discriminator, once for the generator). Logged curves do not use it: ``self.log`` values are filed
under the number of batches (one step per batch), and ``DissectionCallback`` logs on that same axis;
``global_step`` is kept in each round's metadata and names its round file.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Generator", "Discriminator", "DCGAN"]


def _up_block(in_channels: int, out_channels: int, *, first: bool = False) -> nn.Sequential:
    """ConvTranspose + BatchNorm + ReLU; ``first`` maps a 1x1 latent to 4x4, else doubles the size."""
    conv = (
        nn.ConvTranspose2d(in_channels, out_channels, 4, 1, 0, bias=False)
        if first
        else nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False)
    )
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Generator(nn.Module):
    """DCGAN generator: ``(N, latent_dim)`` latents -> ``(N, 3, S, S)`` images in [-1, 1].

    Args:
        latent_dim: Size of a latent vector.
        image_size: Output side; a power of two >= 8 (4 doubled ``log2(S) - 2`` times).
        channels: Widths of ``layer1``, ``layer2``, ...; needs ``log2(image_size) - 1`` entries
            (the last width is repeated if too few are given).

    Submodules ``layer1`` ... ``layerN`` and ``output`` are the named layers to dissect; each
    ``layerK`` outputs a ``(N, channels[K-1], 4 * 2**(K-1), 4 * 2**(K-1))`` ReLU feature map.

    Example:
        >>> g = Generator(latent_dim=16, image_size=32, channels=(32, 16, 8, 8))
        >>> g(torch.randn(2, 16)).shape
        torch.Size([2, 3, 32, 32])
        >>> [name for name, _ in g.named_children()]
        ['layer1', 'layer2', 'layer3', 'layer4', 'output']
    """

    def __init__(
        self,
        latent_dim: int = 128,
        image_size: int = 32,
        channels: Sequence[int] = (256, 128, 64, 32),
    ) -> None:
        super().__init__()
        num_blocks = _num_blocks(image_size)
        widths = list(channels)[:num_blocks]
        widths += [widths[-1]] * (num_blocks - len(widths))
        self.latent_dim = latent_dim
        previous = latent_dim
        for k, width in enumerate(widths, start=1):
            self.add_module(f"layer{k}", _up_block(previous, width, first=k == 1))
            previous = width
        self.output = nn.Sequential(nn.Conv2d(previous, 3, 3, 1, 1), nn.Tanh())
        self.num_blocks = num_blocks

    def forward(self, z: Tensor) -> Tensor:
        """Map ``(N, latent_dim)`` (or ``(N, latent_dim, 1, 1)``) latents to images."""
        x = z.reshape(z.shape[0], self.latent_dim, 1, 1)
        for k in range(1, self.num_blocks + 1):
            x = getattr(self, f"layer{k}")(x)
        return self.output(x)


class Discriminator(nn.Module):
    """DCGAN discriminator: images -> one logit per image.

    Strided 4x4 convolutions halve the size down to 4x4 (LeakyReLU 0.2, BatchNorm after all but
    the first), then a 4x4 convolution gives the logit. ``spectral_norm=True`` wraps every
    convolution in spectral normalisation and drops BatchNorm.
    """

    def __init__(
        self,
        image_size: int = 32,
        channels: Sequence[int] = (32, 64, 128),
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        num_blocks = _num_blocks(image_size) - 1
        widths = list(channels)[:num_blocks]
        widths += [widths[-1]] * (num_blocks - len(widths))
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = []
        previous = 3
        for k, width in enumerate(widths):
            layers.append(wrap(nn.Conv2d(previous, width, 4, 2, 1, bias=spectral_norm)))
            if k > 0 and not spectral_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            previous = width
        layers.append(wrap(nn.Conv2d(previous, 1, 4, 1, 0)))
        self.net = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """Return logits of shape ``(N,)``."""
        return self.net(images).flatten()


def _num_blocks(image_size: int) -> int:
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"`image_size` must be a power of two >= 8, got {image_size}")
    return image_size.bit_length() - 2  # 4 * 2**(n-1) == image_size


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        weight = getattr(module, "parametrizations", None)
        target = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(target, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(L.LightningModule):
    """A DCGAN trained with manual optimisation (two Adam optimizers, non-saturating loss).

    Batches are ``(images, labels)`` from
    :class:`~lightning_dissect.segmenters.datamodule.SyntheticSceneDataModule`; the labels are
    ignored (they are only used by the dissection, through the segmenter).

    Each training batch does one discriminator step and one generator step. The fake images are
    generated once per batch and reused for both steps (detached for the discriminator step).

    Note:
        Under manual optimisation each ``optimizer.step()`` increments ``trainer.global_step``:
        with the two optimizers here it advances **twice per batch**. Logged metrics
        (``g_loss``, ``d_loss``, ``d_real``, ``d_fake``) are filed by Lightning under the batch
        count instead (one step per batch), the axis the dissection callback logs on too.
        Under DDP the module needs ``find_unused_parameters=True`` (the discriminator step does not
        use the generator's parameters): pass ``strategy="ddp_find_unused_parameters_true"`` (or
        ``"ddp_spawn_find_unused_parameters_true"``).

    Args:
        latent_dim: Size of a latent; latents are ``(N, latent_dim)``.
        image_size: Side of the images (power of two).
        g_channels: Generator widths (``layer1``, ``layer2``, ...).
        d_channels: Discriminator widths.
        lr_g: Generator learning rate (Adam).
        lr_d: Discriminator learning rate (Adam).
        betas: Adam betas of both optimizers.
        spectral_norm: Spectral norm in the discriminator (instead of BatchNorm).
        num_sample_images: Size of the fixed latent set used by :meth:`sample_grid`.
    """

    def __init__(
        self,
        latent_dim: int = 128,
        image_size: int = 32,
        g_channels: Sequence[int] = (256, 128, 64, 32),
        d_channels: Sequence[int] = (32, 64, 128),
        lr_g: float = 2e-4,
        lr_d: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        spectral_norm: bool = False,
        num_sample_images: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(latent_dim, image_size, tuple(g_channels))
        self.discriminator = Discriminator(image_size, tuple(d_channels), spectral_norm)
        self.generator.apply(_init_weights)
        self.discriminator.apply(_init_weights)
        # Fixed latents for sample grids (a buffer: it moves with the module and is checkpointed).
        gen = torch.Generator().manual_seed(0)
        self.register_buffer(
            "sample_latents", torch.randn(num_sample_images, latent_dim, generator=gen)
        )

    def forward(self, z: Tensor) -> Tensor:
        """Generate images from ``(N, latent_dim)`` latents."""
        return self.generator(z)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr_g, betas=tuple(hp.betas))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=tuple(hp.betas))
        return [opt_g, opt_d]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        n = real.shape[0]
        z = torch.randn(n, self.hparams.latent_dim, device=real.device, dtype=real.dtype)
        fake = self.generator(z)
        if fake.shape != real.shape:
            raise ValueError(
                f"generated images {tuple(fake.shape)} do not match the data {tuple(real.shape)}: "
                "check `image_size`"
            )

        # Discriminator step: real -> 1, fake -> 0.
        self.toggle_optimizer(opt_d)
        logits_real = self.discriminator(real)
        logits_fake = self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            logits_real, torch.ones_like(logits_real)
        ) + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        # Generator step (non-saturating): make the discriminator call the fakes real.
        self.toggle_optimizer(opt_g)
        logits_gen = self.discriminator(fake)
        g_loss = F.binary_cross_entropy_with_logits(logits_gen, torch.ones_like(logits_gen))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.log_dict(
            {
                "g_loss": g_loss.detach(),
                "d_loss": d_loss.detach(),
                "d_real": torch.sigmoid(logits_real.detach()).mean(),
                "d_fake": torch.sigmoid(logits_fake.detach()).mean(),
            },
            prog_bar=True,
        )

    @torch.no_grad()
    def sample_grid(self, nrow: int = 8, pad: int = 2, scale: int = 1) -> Tensor:
        """A ``uint8 (3, H, W)`` grid of images from the fixed ``sample_latents`` (eval mode).

        ``scale`` enlarges the grid by pixel repetition (nearest neighbour).
        """
        was_training = self.generator.training
        self.generator.eval()
        try:
            images = self.generator(self.sample_latents)
        finally:
            self.generator.train(was_training)
        images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        n, _, h, w = images.shape
        ncol = nrow
        nrows = (n + ncol - 1) // ncol
        grid = torch.full((3, nrows * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
        for i in range(n):
            r, c = divmod(i, ncol)
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[:, top : top + h, left : left + w] = images[i]
        return grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
