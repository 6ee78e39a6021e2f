"""Convolutional autoencoder between images and a continuous tanh latent grid (the subgoal-image decoder)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    """Two 3x3 convs with a skip; GroupNorm (not BatchNorm) so train/eval modes compute the same thing."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8 if ch % 8 == 0 else 1, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8 if ch % 8 == 0 else 1, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ImageTokenizer(nn.Module):
    """Images [N, 3, H, W] in [-1, 1] <-> latents [N, C, h, w] in (-1, 1).

    Args:
        latent_channels: C.
        channels: conv widths per resolution, from H down to h (len = log2(H / h) + 1).
    """

    def __init__(self, latent_channels: int, channels: list[int]) -> None:
        super().__init__()
        enc: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            enc += [nn.SiLU(), nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)]
        enc += [ResBlock(channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1), ResBlock(channels[-1])]
        rev = channels[::-1]
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            # nearest upsampling + conv avoids the checkerboard of transposed convs
            dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
        dec += [nn.SiLU(), nn.Conv2d(channels[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> tanh latents [N, C, h, w]."""
        return torch.tanh(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] -> [N, 3, H, W] in [-1, 1]."""
        return torch.tanh(self.decoder(z))

    def recon_loss(self, x: torch.Tensor, noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE of reconstructing x [N, 3, H, W] from noisy latents, and the PSNR in dB (images in [0, 1])."""
        z = self.encode(x)
        if noise_std > 0:
            z = z + noise_std * torch.randn_like(z)
        x_hat = self.decode(z)
        mse = F.mse_loss(x_hat, x)
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # range 2 in [-1, 1] -> peak^2 = 4
        return mse, psnr
