"""WLAConfig: sizes of the image tokenizer, backbone, Action Expert and World Expert, plus normalisation stats."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

ACTION_HEADS = ("gaussian", "flow")


def tiny_llama_config(hidden_size: int = 128, num_layers: int = 3, num_heads: int = 4) -> dict:
    """A tiny Llama decoder config dict (vocab size is filled in from the tokenizer)."""
    return {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "max_position_embeddings": 512,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
    }


class WLAConfig(PretrainedConfig):
    """Configuration of a `WLAPolicy`.

    Sequence fed to the backbone: instruction tokens | h*w image-latent tokens | state token | [BOS] subtask
    tokens | M meta-queries. Shape letters as in DESIGN.md.

    Args:
        image_size: square image side H = W in pixels.
        latent_size: latent grid side h = w; image_size / latent_size must be a power of two.
        latent_channels: C, channels of the tanh latent grid.
        tokenizer_channels: conv widths of the image tokenizer, one per resolution (len = log2(image/latent) + 1).
        latent_noise_std: Gaussian noise added to latents during SFT (decoder, backbone and World-Expert inputs) so
            that the model tolerates its own imperfect predictions in closed loop.
        latent_patch: p; the latent grid enters the backbone and the World Expert as (h/p)*(w/p) tokens of p x p
            latent cells (fewer tokens, faster on CPU).
        recon_fraction: share of the batch rows whose frames are reconstructed in `sft_losses` (the rest is encoded
            without gradient); the tokenizer pre-stage trains on all of them.
        state_dim: S.
        full_state_dim: F, the full simulator state the World Expert models beside the frames (Meta-World: 39, object
            and goal positions); 0 = it does not. Observations that carry `full_states` feed it; imagination carries
            the predicted one forward and hands it to rewards as `full_states`.
        action_dim: A.
        chunk_size: H, actions per chunk.
        backbone_config: kwargs of an HF decoder config (`model_type` selects it; tiny Llama by default).
        vocab_size: text vocabulary size (set from the tokenizer).
        max_instruction_tokens: instructions are truncated to this many tokens.
        max_subtask_tokens: longest generated subtask, [EOS] included.
        num_meta_queries: M learned queries whose backbone states feed both experts.
        action_head: "gaussian" (exact log-probs) or "flow" (flow matching with stochastic denoising chain).
        action_hidden: MLP width of the Action Expert.
        log_std_init, log_std_min, log_std_max: Gaussian head's learned state-independent log-std per (H, A), in
            env action units, clamped to [min, max].
        flow_steps: K denoising steps of the flow head.
        flow_sigma: total noise std injected over the K steps (per step flow_sigma * sqrt(1/K)), normalised units.
        flow_sigma_min: floor of the per-step std so that chain log-probs never degenerate.
        world_hidden, world_layers, world_heads: World Expert transformer size.
        state_mean, state_std, action_mean, action_std: normalisation stats (length S / A) from the dataset.
        full_state_mean, full_state_std: normalisation stats of the full state (length F).
        *_weight: SFT loss weights.
        latent_state_weight: weight of the latent state probe, a small head that reads the (normalised) full state
            from a frame's image latents, trained with the image tokenizer in both SFT stages, its gradient reaching
            the encoder; so latents keep small objects and goal markers, which the reconstruction loss alone blurs
            away (2-3 px at 64 px). 0: no probe (and no probe weights). Needs full_state_dim > 0.
        meta_state_weight: weight of the backbone state probe, a small head that reads the (normalised) full state
            from the meta-query states both experts read, in joint SFT only, its gradient reaching the backbone: the
            backbone must then carry the goal and object positions that the frame shows (the action loss alone lets a
            policy average over goals). Training only (the head is not used to act). 0: no probe. Needs
            full_state_dim > 0.
        task_names: simulator tasks of the SFT data (informational, for evaluation; nothing is task-specific).
    """

    model_type = "wla"

    def __init__(
        self,
        image_size: int = 64,
        latent_size: int = 8,
        latent_channels: int = 16,
        tokenizer_channels: list[int] | None = None,
        latent_noise_std: float = 0.1,
        latent_patch: int = 2,
        recon_fraction: float = 0.25,
        state_dim: int = 4,
        full_state_dim: int = 0,
        action_dim: int = 4,
        chunk_size: int = 8,
        backbone_config: dict | None = None,
        vocab_size: int = 64,
        max_instruction_tokens: int = 32,
        max_subtask_tokens: int = 12,
        num_meta_queries: int = 4,
        action_head: str = "gaussian",
        action_hidden: int = 256,
        log_std_init: float = -1.0,
        log_std_min: float = math.log(0.05),
        log_std_max: float = 0.0,
        flow_steps: int = 5,
        flow_sigma: float = 0.3,
        flow_sigma_min: float = 0.02,
        world_hidden: int = 128,
        world_layers: int = 2,
        world_heads: int = 4,
        state_mean: list[float] | None = None,
        state_std: list[float] | None = None,
        action_mean: list[float] | None = None,
        action_std: list[float] | None = None,
        full_state_mean: list[float] | None = None,
        full_state_std: list[float] | None = None,
        action_loss_weight: float = 1.0,
        world_latent_weight: float = 1.0,
        world_state_weight: float = 1.0,
        world_success_weight: float = 0.1,
        world_full_state_weight: float = 1.0,
        subtask_weight: float = 0.1,
        recon_weight: float = 1.0,
        latent_state_weight: float = 0.0,
        meta_state_weight: float = 0.0,
        task_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        self.image_size = image_size
        self.latent_size = latent_size
        self.latent_channels = latent_channels
        self.tokenizer_channels = list(tokenizer_channels) if tokenizer_channels is not None else [16, 32, 64, 64]
        self.latent_noise_std = latent_noise_std
        self.latent_patch = latent_patch
        self.recon_fraction = recon_fraction
        self.state_dim = state_dim
        self.full_state_dim = full_state_dim
        self.action_dim = action_dim
        self.chunk_size = chunk_size
        self.backbone_config = dict(backbone_config) if backbone_config is not None else tiny_llama_config()
        self.vocab_size = vocab_size
        self.backbone_config["vocab_size"] = vocab_size
        self.max_instruction_tokens = max_instruction_tokens
        self.max_subtask_tokens = max_subtask_tokens
        self.num_meta_queries = num_meta_queries
        self.action_head = action_head
        self.action_hidden = action_hidden
        self.log_std_init = log_std_init
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.flow_steps = flow_steps
        self.flow_sigma = flow_sigma
        self.flow_sigma_min = flow_sigma_min
        self.world_hidden = world_hidden
        self.world_layers = world_layers
        self.world_heads = world_heads
        self.state_mean = list(state_mean) if state_mean is not None else [0.0] * state_dim
        self.state_std = list(state_std) if state_std is not None else [1.0] * state_dim
        self.action_mean = list(action_mean) if action_mean is not None else [0.0] * action_dim
        self.action_std = list(action_std) if action_std is not None else [1.0] * action_dim
        self.full_state_mean = list(full_state_mean) if full_state_mean is not None else [0.0] * full_state_dim
        self.full_state_std = list(full_state_std) if full_state_std is not None else [1.0] * full_state_dim
        self.action_loss_weight = action_loss_weight
        self.world_latent_weight = world_latent_weight
        self.world_state_weight = world_state_weight
        self.world_success_weight = world_success_weight
        self.world_full_state_weight = world_full_state_weight
        self.subtask_weight = subtask_weight
        self.recon_weight = recon_weight
        self.latent_state_weight = latent_state_weight
        self.meta_state_weight = meta_state_weight
        self.task_names = list(task_names) if task_names is not None else []
        super().__init__(**kwargs)
        self.validate()

    @property
    def num_downsamples(self) -> int:
        return int(round(math.log2(self.image_size / self.latent_size)))

    def validate(self) -> None:
        """Check invariants; errors say which field to change."""
        if self.action_head not in ACTION_HEADS:
            raise ValueError(f"WLAConfig.action_head: expected one of {ACTION_HEADS}, got {self.action_head!r}")
        ratio = self.image_size / self.latent_size
        if ratio < 1 or 2**self.num_downsamples != ratio:
            raise ValueError(
                f"WLAConfig: image_size / latent_size must be a power of two, got {self.image_size}/{self.latent_size}"
            )
        if self.latent_patch < 1 or self.latent_size % self.latent_patch:
            raise ValueError(f"WLAConfig.latent_patch={self.latent_patch} must divide latent_size={self.latent_size}")
        if not 0 < self.recon_fraction <= 1:
            raise ValueError(f"WLAConfig.recon_fraction={self.recon_fraction}: expected a value in (0, 1]")
        if len(self.tokenizer_channels) != self.num_downsamples + 1:
            raise ValueError(
                f"WLAConfig.tokenizer_channels: expected {self.num_downsamples + 1} widths (one per resolution from "
                f"{self.image_size} down to {self.latent_size} px), got {self.tokenizer_channels}"
            )
        for name, n in (("state_mean", self.state_dim), ("state_std", self.state_dim)):
            if len(getattr(self, name)) != n:
                raise ValueError(f"WLAConfig.{name}: expected length state_dim={n}, got {len(getattr(self, name))}")
        if self.latent_state_weight < 0:
            raise ValueError(
                f"WLAConfig.latent_state_weight: expected ≥ 0 (0 = no probe), got {self.latent_state_weight}"
            )
        if self.latent_state_weight > 0 and self.full_state_dim == 0:
            raise ValueError(
                "WLAConfig.latent_state_weight > 0 reads full states from image latents: it needs full_state_dim > 0 "
                "(world_full_state in SFT)"
            )
        if self.meta_state_weight < 0:
            raise ValueError(f"WLAConfig.meta_state_weight: expected ≥ 0 (0 = no probe), got {self.meta_state_weight}")
        if self.meta_state_weight > 0 and self.full_state_dim == 0:
            raise ValueError(
                "WLAConfig.meta_state_weight > 0 reads full states from the backbone: it needs full_state_dim > 0 "
                "(world_full_state in SFT)"
            )
        if self.full_state_dim < 0:
            raise ValueError(f"WLAConfig.full_state_dim: expected ≥ 0 (0 = not modelled), got {self.full_state_dim}")
        for name, n in (("full_state_mean", self.full_state_dim), ("full_state_std", self.full_state_dim)):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"WLAConfig.{name}: expected length full_state_dim={n}, got {len(getattr(self, name))}"
                )
        for name, n in (("action_mean", self.action_dim), ("action_std", self.action_dim)):
            if len(getattr(self, name)) != n:
                raise ValueError(f"WLAConfig.{name}: expected length action_dim={n}, got {len(getattr(self, name))}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError("WLAConfig: log_std_min must be < log_std_max")
        if self.flow_steps < 1 or self.flow_sigma_min <= 0:
            raise ValueError("WLAConfig: flow_steps must be >= 1 and flow_sigma_min > 0 (guards vanishing sigma)")
        if self.max_subtask_tokens < 2:
            raise ValueError("WLAConfig.max_subtask_tokens must be >= 2 (one word plus [EOS])")
        if self.world_hidden % self.world_heads:
            raise ValueError("WLAConfig: world_hidden must be divisible by world_heads")
