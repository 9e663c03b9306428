"""A tiny manual-optimisation GAN LightningModule for callback tests (fast on CPU)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dissect.segmenters import SceneWorld


class TinyGenerator(nn.Module):
    def __init__(self, latent_dim: int = 16, width: int = 16) -> None:
        super().__init__()
        self.fc = nn.Linear(latent_dim, width * 4 * 4)
        self.width = width
        self.layer1 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(width, 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z.flatten(1)).view(-1, self.width, 4, 4)
        return self.out(self.layer2(self.layer1(x)))


class TinyGAN(pl.LightningModule):
    def __init__(self, latent_dim: int = 16, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = TinyGenerator(latent_dim)
        self.discriminator = nn.Sequential(
            nn.Conv2d(3, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 8 * 8, 1)
        )

    def training_step(self, batch, batch_idx):
        images = batch[0]
        opt_g, opt_d = self.optimizers()
        z = torch.randn(images.shape[0], self.hparams.latent_dim, device=self.device)
        fake = self.generator(z)
        bce = nn.functional.binary_cross_entropy_with_logits
        d_loss = bce(self.discriminator(images), torch.ones(len(images), 1, device=self.device)) + bce(
            self.discriminator(fake.detach()), torch.zeros(len(images), 1, device=self.device)
        )
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = bce(self.discriminator(fake), torch.ones(len(images), 1, device=self.device))
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        self.log("g_loss", g_loss)

    def configure_optimizers(self):
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr),
        ]


def scene_loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    images, _ = SceneWorld(16).render(n, seed=seed)
    return DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True)
