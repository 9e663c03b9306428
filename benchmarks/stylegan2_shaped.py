"""A StyleGAN2-shaped generator for the benchmarks (random weights, plain torch).

Mapping network ``z (64) -> w (256)`` (pixel norm + 4 linear layers), a learned 4 x 4 constant,
synthesis blocks that double the resolution up to 128 x 128, each two modulated / demodulated
3 x 3 convolutions (the first after a bilinear 2x upsampling) with per-pixel noise and leaky ReLU,
and an RGB skip path (a 1 x 1 modulated ``to_rgb`` per block, upsampled and summed); images are
``tanh``-squashed to ``[-1, 1]``. Widths: 256 channels up to 32 x 32, 128 at 64 x 64 and 64 at
128 x 128 (StyleGAN2's halving schedule, scaled down to run on a CPU). The round benchmark
dissects the 32 x 32 and 64 x 64 blocks: **256 + 128 units**, upsampled to the 128 x 128
segmentation.

Blocks return the feature map (the RGB skip is kept on the module), so ``blocks.3`` and
``blocks.4`` are plain tensor layers. Noise is drawn with ``torch.randn`` in ``forward`` as in
StyleGAN2 (the dissection seeds it per latent).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Z_DIM = 64
W_DIM = 256
#: Output width of each resolution 4, 8, ..., 128.
WIDTHS = (256, 256, 256, 256, 128, 64)
#: The dissected layers: the 32 x 32 (256 units) and 64 x 64 (128 units) blocks.
LAYERS = ["blocks.3", "blocks.4"]


class ModulatedConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.affine = nn.Linear(W_DIM, in_ch)
        nn.init.ones_(self.affine.bias)
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # StyleGAN2's non-fused modulation: scale the input channels by the style, convolve with
        # the shared weight, then scale the output channels by the demodulation coefficients
        style = self.affine(w) * self.scale  # (B, in)
        y = F.conv2d(x * style[:, :, None, None], self.weight, padding=self.padding)
        if self.demodulate:
            demod = torch.rsqrt((self.weight.pow(2).sum((2, 3))[None] * style[:, None, :].pow(2)).sum(2) + 1e-8)
            y = y * demod[:, :, None, None]
        return y


class Block(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv1 = ModulatedConv(in_ch, out_ch, 3)
        self.conv2 = ModulatedConv(out_ch, out_ch, 3)
        self.noise_strength = nn.Parameter(torch.full((2,), 0.1))
        self.bias = nn.Parameter(torch.zeros(2, out_ch))
        self.to_rgb = ModulatedConv(out_ch, 3, 1, demodulate=False)
        self.rgb: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        for i, conv in enumerate((self.conv1, self.conv2)):
            x = conv(x, w)
            noise = torch.randn(x.shape[0], 1, *x.shape[-2:], device=x.device)
            x = F.leaky_relu(x + self.noise_strength[i] * noise + self.bias[i, :, None, None], 0.2) * math.sqrt(2)
        self.rgb = self.to_rgb(x, w)
        return x


class StyleGAN2Shaped(nn.Module):
    """``(N, 64)`` latents -> ``(N, 3, 128, 128)`` images in ``[-1, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Linear(Z_DIM if i == 0 else W_DIM, W_DIM), nn.LeakyReLU(0.2)]
        self.mapping = nn.Sequential(*layers)
        self.const = nn.Parameter(torch.randn(1, WIDTHS[0], 4, 4))
        self.blocks = nn.ModuleList(
            Block(WIDTHS[max(0, i - 1)], WIDTHS[i], upsample=i > 0) for i in range(len(WIDTHS))
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        w = self.mapping(z)
        x = self.const.expand(z.shape[0], -1, -1, -1)
        rgb = None
        for block in self.blocks:
            x = block(x, w)
            rgb = block.rgb if rgb is None else F.interpolate(rgb, scale_factor=2, mode="bilinear") + block.rgb
        return torch.tanh(rgb)
