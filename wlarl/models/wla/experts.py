"""Action Expert heads (Gaussian, flow) and World Expert, all reading the backbone's meta-query states.

Shapes: N rows, M meta-queries, D backbone width, H actions per chunk, A action dim, S state dim, K flow steps,
C,h,w latent grid. Action heads work in normalised action units; the policy maps them to env units.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, std^2)."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - LOG_SQRT_2PI


def patchify(latents: torch.Tensor, p: int) -> torch.Tensor:
    """[N, C, h, w] -> [N, (h/p)*(w/p), C*p*p] non-overlapping p x p patches, row-major."""
    n, c, h, w = latents.shape
    x = latents.view(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # [N, h/p, w/p, C, p, p]
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, c: int, h: int, w: int, p: int) -> torch.Tensor:
    """Inverse of `patchify`: [N, (h/p)*(w/p), C*p*p] -> [N, C, h, w]."""
    n = tokens.shape[0]
    x = tokens.view(n, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)  # [N, C, h/p, p, w/p, p]
    return x.reshape(n, c, h, w)


def mlp(d_in: int, d_hidden: int, d_out: int, zero_last: bool = False) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_hidden), nn.SiLU())
    last = nn.Linear(d_hidden, d_out)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    net.append(last)
    return net


class GaussianActionHead(nn.Module):
    """Mean chunk from the meta-query states; learned state-independent log-std per (H, A), clamped.

    Args:
        d_model: D. num_queries: M. horizon: H. action_dim: A. hidden: MLP width.
        log_std_init, log_std_min, log_std_max: log-std parameter init and clamp range.
    """

    def __init__(self, d_model, num_queries, horizon, action_dim, hidden, log_std_init, log_std_min, log_std_max):
        super().__init__()
        self.horizon, self.action_dim = horizon, action_dim
        self.mean_net = mlp(num_queries * d_model, hidden, horizon * action_dim)
        self.log_std = nn.Parameter(torch.full((horizon, action_dim), float(log_std_init)))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, meta: torch.Tensor) -> torch.Tensor:
        """meta [N, M, D] -> mean [N, H, A] (normalised units)."""
        return self.mean_net(meta.flatten(1)).view(-1, self.horizon, self.action_dim)

    def std(self) -> torch.Tensor:
        """[H, A] clamped std (env action units)."""
        return self.log_std.clamp(self.log_std_min, self.log_std_max).exp()


class FlowActionHead(nn.Module):
    """Velocity field v(x_t, t | meta) for flow matching from N(0, I) (t=0) to normalised actions (t=1).

    Sampling is a K-step stochastic Euler chain x_{k+1} = x_k + v(x_k, t_k) dt + sigma_k eps, whose per-step
    Gaussian transitions give exact chain log-probs (Flow-SDE / ReinFlow style).
    """

    def __init__(self, d_model, num_queries, horizon, action_dim, hidden, time_dim: int = 32):
        super().__init__()
        self.horizon, self.action_dim, self.time_dim = horizon, action_dim, time_dim
        self.context = nn.Sequential(nn.Linear(num_queries * d_model, hidden), nn.SiLU())
        self.velocity_net = mlp(hidden + horizon * action_dim + time_dim, hidden, horizon * action_dim)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """t [N] in [0, 1] -> sinusoidal features [N, time_dim]."""
        half = self.time_dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * (-math.log(100.0) / max(half - 1, 1)))
        ang = 2 * math.pi * t[:, None] * freqs[None, :]
        return torch.cat([ang.sin(), ang.cos()], dim=-1)

    def context_of(self, meta: torch.Tensor) -> torch.Tensor:
        """meta [N, M, D] -> context [N, hidden]."""
        return self.context(meta.flatten(1))

    def velocity(self, ctx: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ctx [N, hidden], x [N, H, A], t [N] -> v [N, H, A]."""
        h = torch.cat([ctx, x.flatten(1), self.time_embedding(t)], dim=-1)
        return self.velocity_net(h).view_as(x)


class WorldExpert(nn.Module):
    """Predicts the latent grid, state, success and (with `full_state_dim` F > 0) the full simulator state after an
    action chunk.

    Tokens: (h/p)*(w/p) current-latent patch tokens | H action tokens | M meta-query tokens | 1 state token, mixed by a small
    bidirectional transformer. It reads the meta-query states and never writes into them, so switching world
    prediction on or off cannot change actions. Outputs are residual: the latent *change* (in pre-tanh space, so
    latents stay in (-1, 1) however long it is rolled out) and the normalised state change; the output layers start
    at zero so an untrained expert copies the last frame. The full state enters the state token and comes out as a
    normalised change, so object and goal positions known at the start are carried through a long imagination.
    """

    def __init__(
        self, d_model, num_queries, latent_channels, latent_size, horizon, action_dim, state_dim, hidden, layers, heads,
        patch: int = 1, full_state_dim: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.patch = patch
        self.full_state_dim = full_state_dim
        n_lat = (latent_size // patch) ** 2
        self.latent_in = nn.Linear(latent_channels * patch * patch, hidden)
        self.latent_pos = nn.Parameter(torch.randn(n_lat, hidden) * 0.02)
        self.action_in = nn.Linear(action_dim, hidden)
        self.action_pos = nn.Parameter(torch.randn(horizon, hidden) * 0.02)
        self.meta_in = nn.Linear(d_model, hidden)
        self.state_in = nn.Linear(state_dim, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 4 * hidden, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.latent_out = nn.Linear(hidden, latent_channels * patch * patch)
        self.state_out = nn.Linear(hidden, state_dim + 1)  # state change and success logit
        outputs = [self.latent_out, self.state_out]
        if full_state_dim > 0:
            self.full_state_in = nn.Linear(full_state_dim, hidden)
            self.full_state_out = nn.Linear(hidden, full_state_dim)  # normalised full-state change
            outputs.append(self.full_state_out)
        for lin in outputs:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, meta, latents, state_norm, actions_norm, full_state_norm=None):
        """Predict the world after the chunk.

        Args:
            meta: [N, M, D] meta-query states.
            latents: [N, C, h, w] current latents in (-1, 1).
            state_norm: [N, S] normalised current state.
            actions_norm: [N, H, A] normalised action chunk.
            full_state_norm: optional [N, F] normalised current full state (F > 0 only; None reads as the mean).

        Returns:
            next latents [N, C, h, w], normalised state change [N, S], success logit [N], and the normalised
            full-state change [N, F] (None when F = 0).
        """
        n, c, h, w = latents.shape
        p = self.patch
        lat_tok = self.latent_in(patchify(latents, p)) + self.latent_pos  # [N, h*w/p^2, hidden]
        act_tok = self.action_in(actions_norm) + self.action_pos  # [N, H, hidden]
        state_tok = self.state_in(state_norm)
        if self.full_state_dim > 0 and full_state_norm is not None:
            state_tok = state_tok + self.full_state_in(full_state_norm)
        x = torch.cat([lat_tok, act_tok, self.meta_in(meta), state_tok[:, None]], dim=1)
        x = self.norm(self.encoder(x))
        delta = unpatchify(self.latent_out(x[:, : lat_tok.shape[1]]), c, h, w, p)  # [N, C, h, w]
        pre = torch.atanh(latents.clamp(-0.995, 0.995))
        next_latents = torch.tanh(pre + delta)
        out = self.state_out(x[:, -1])  # [N, S+1]
        d_full = self.full_state_out(x[:, -1]) if self.full_state_dim > 0 else None  # [N, F]
        return next_latents, out[:, :-1], out[:, -1], d_full
