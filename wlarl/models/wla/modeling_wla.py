"""WLAPolicy: image tokenizer + HF decoder backbone + meta-queries + Action Expert + World Expert.

Backbone sequence per row (shape letters as in DESIGN.md, D = backbone width, M meta-queries, P prefix length):

    instruction tokens (right-padded) | h*w image-latent tokens | state token | [BOS] | subtask tokens | M meta-queries
    \\_______________________________ prefix, P tokens ________________________/

The subtask is generated autoregressively after [BOS]; the meta-queries come last and attend to everything, so
their states summarise instruction, image, state and the chosen subtask. The Action Expert maps them to an action
chunk [N, H, A]; the World Expert reads them (never writes into them) together with an action chunk and the
current latents to predict the latent grid, state and success at t+H. Padding is masked out of attention and
position ids count real tokens only, so the same row gives the same result whatever the padding of its batch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, DynamicCache, PreTrainedModel

from wlarl.models.wla.configuration_wla import WLAConfig
from wlarl.models.wla.experts import FlowActionHead, GaussianActionHead, WorldExpert, gaussian_log_prob, patchify
from wlarl.models.wla.image_tokenizer import ImageTokenizer
from wlarl.models.wla.processing_wla import (
    PROCESSOR_CONFIG,
    TOKENIZER_FILE,
    WLAProcessor,
    postprocess_images,
    preprocess_images,
)
from wlarl.types import ActionSample, LazyImages, Observation, WorldPrediction

SEG_INSTRUCTION, SEG_LATENT, SEG_STATE, SEG_SUBTASK, SEG_META = range(5)
# The World Expert's SFT terms (`WLAPolicy.world_loss` weights them); the full-state one only with full_state_dim > 0.
WORLD_TERMS = ("loss/world_latent", "loss/world_state", "loss/world_success", "loss/world_full_state")


def _culprit(path: Path, err: Exception) -> str:
    """The checkpoint file a load error most likely comes from (for the error message)."""
    if isinstance(err, SafetensorError) or "safetensors" in str(err).lower() or "deserializ" in str(err).lower():
        names = sorted(p.name for p in path.glob("*.safetensors"))
        return f"weights file {path / names[0]}" if names else f"weights file (no *.safetensors in {path})"
    if "json" in str(err).lower() or "config" in str(err).lower():
        return f"config file {path / 'config.json'}"
    return f"file in {path}"


PAD_ID, BOS_ID, EOS_ID = WLAProcessor.pad_id, WLAProcessor.bos_id, WLAProcessor.eos_id


class WLAPreTrainedModel(PreTrainedModel):
    config_class = WLAConfig
    base_model_prefix = "wla"
    main_input_name = "images"
    _no_split_modules = ["LlamaDecoderLayer", "WorldExpert", "ImageTokenizer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-modules keep their own initialisation (PyTorch defaults, the HF backbone's, zero-init output layers).
        pass


class WLAPolicy(WLAPreTrainedModel):
    """World-Language-Action policy. See the module docstring for the sequence layout.

    Args:
        config: a `WLAConfig`.
        processor: the `WLAProcessor` (tokenizer + image preprocessing); needed by `act`, `log_prob`, `imagine` and
            `sft_losses`. `from_pretrained` loads it from the checkpoint folder.
    """

    def __init__(self, config: WLAConfig, processor: WLAProcessor | None = None) -> None:
        super().__init__(config)
        c = config
        self.image_tokenizer = ImageTokenizer(c.latent_channels, c.tokenizer_channels)
        backbone_config = AutoConfig.for_model(**c.backbone_config)
        self.backbone = AutoModel.from_config(backbone_config)
        d = backbone_config.hidden_size
        self.hidden_size = d
        n_lat = (c.latent_size // c.latent_patch) ** 2
        self.latent_proj = nn.Linear(c.latent_channels * c.latent_patch**2, d)
        self.latent_pos = nn.Parameter(torch.randn(n_lat, d) * 0.02)
        self.state_proj = nn.Linear(c.state_dim, d)
        self.segment_emb = nn.Embedding(5, d)
        self.meta_queries = nn.Parameter(torch.randn(c.num_meta_queries, d) * 0.02)
        self.subtask_head = nn.Linear(d, c.vocab_size)
        if c.action_head == "gaussian":
            self.action_expert = GaussianActionHead(
                d, c.num_meta_queries, c.chunk_size, c.action_dim, c.action_hidden,
                c.log_std_init, c.log_std_min, c.log_std_max,
            )  # fmt: skip
        else:
            self.action_expert = FlowActionHead(d, c.num_meta_queries, c.chunk_size, c.action_dim, c.action_hidden)
        self.world_expert = WorldExpert(
            d, c.num_meta_queries, c.latent_channels, c.latent_size, c.chunk_size, c.action_dim, c.state_dim,
            c.world_hidden, c.world_layers, c.world_heads, c.latent_patch, c.full_state_dim,
        )  # fmt: skip
        # The latent state probe: full state from a frame's latents (only with latent_state_weight > 0).
        self.latent_probe = None
        if c.latent_state_weight > 0:
            self.latent_probe = nn.Sequential(
                nn.Flatten(), nn.Linear(c.latent_channels * c.latent_size**2, 256), nn.GELU(),
                nn.Linear(256, c.full_state_dim),
            )  # fmt: skip
        # The backbone state probe: full state from the meta-query states (only with meta_state_weight > 0).
        self.meta_probe = None
        if c.meta_state_weight > 0:
            self.meta_probe = nn.Sequential(
                nn.Flatten(), nn.Linear(c.num_meta_queries * d, 256), nn.GELU(), nn.Linear(256, c.full_state_dim)
            )
        # Normalisation stats live in the config and, as persistent buffers, in the weights.
        self.register_buffer("state_mean", torch.tensor(c.state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.tensor(c.state_std, dtype=torch.float32))
        self.register_buffer("action_mean", torch.tensor(c.action_mean, dtype=torch.float32))
        self.register_buffer("action_std", torch.tensor(c.action_std, dtype=torch.float32))
        self.register_buffer("full_state_mean", torch.tensor(c.full_state_mean, dtype=torch.float32))
        self.register_buffer("full_state_std", torch.tensor(c.full_state_std, dtype=torch.float32))
        self.processor = processor
        self.post_init()

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Weights (safetensors) and config, plus the processor (tokenizer.json, processor_config.json)."""
        super().save_pretrained(save_directory, **kwargs)
        if self.processor is not None:
            self.processor.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs) -> WLAPolicy:
        """Load weights and config; the processor is loaded from the same folder unless `processor=` is given."""
        processor = kwargs.pop("processor", None)
        path = Path(pretrained_model_name_or_path)
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            files = sorted(p.name for p in path.glob("*")) if path.is_dir() else []
            raise ValueError(
                f"WLAPolicy.from_pretrained: cannot load the checkpoint in {path} (files: {files}): a truncated or "
                f"corrupt {_culprit(path, err)}? {type(err).__name__}: {err}"
            ) from err
        if processor is None and (path / TOKENIZER_FILE).is_file() and (path / PROCESSOR_CONFIG).is_file():
            processor = WLAProcessor.from_pretrained(path)
        model.processor = processor
        return model

    def set_normalization(
        self, state_mean, state_std, action_mean, action_std, min_std: float = 1e-2,
        full_state_mean=None, full_state_std=None,
    ) -> None:  # fmt: skip
        """Set state/action (and, when the World Expert models full states, full-state) normalisation stats
        (length S / A / F; stds floored at `min_std`) in buffers and config."""
        stats = {
            "state_mean": state_mean,
            "state_std": state_std,
            "action_mean": action_mean,
            "action_std": action_std,
        }
        if full_state_mean is not None or full_state_std is not None:
            stats.update(full_state_mean=full_state_mean, full_state_std=full_state_std)
        for name, value in stats.items():
            t = torch.as_tensor(value, dtype=torch.float32).flatten()
            if name.endswith("std"):
                t = t.clamp_min(min_std)
            buf = getattr(self, name)
            if t.shape != buf.shape:
                raise ValueError(f"set_normalization: {name} expected shape {list(buf.shape)}, got {list(t.shape)}")
            buf.copy_(t.to(buf.device))
            setattr(self.config, name, t.tolist())

    @property
    def num_parameters_by_part(self) -> dict[str, int]:
        """Parameter counts of the main parts."""
        parts = {
            "image_tokenizer": self.image_tokenizer,
            "backbone": self.backbone,
            "action_expert": self.action_expert,
            "world_expert": self.world_expert,
        }
        out = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    def _require_processor(self) -> WLAProcessor:
        if self.processor is None:
            raise RuntimeError(
                "WLAPolicy has no processor (tokenizer); pass processor=WLAProcessor.build(corpus) to the "
                "constructor or load with from_pretrained from a folder holding tokenizer.json"
            )
        return self.processor

    # ------------------------------------------------------------------ input checks
    def _check_obs(self, obs: Observation) -> None:
        c = self.config
        if not isinstance(obs, Observation):
            raise TypeError(f"obs: expected wlarl.types.Observation, got {type(obs).__name__}")
        s = c.image_size
        if tuple(obs.images.shape[1:]) != (s, s, 3):
            raise ValueError(
                f"Observation.images: expected shape [N, {s}, {s}, 3] uint8, got {list(obs.images.shape)}"
            )
        if obs.states.shape[1] != c.state_dim:
            raise ValueError(
                f"Observation.states: expected shape [N, {c.state_dim}] float32, got {list(obs.states.shape)}"
            )
        if obs.latents is not None:
            want = (c.latent_channels, c.latent_size, c.latent_size)
            if tuple(obs.latents.shape[1:]) != want or not obs.latents.is_floating_point():
                raise ValueError(
                    f"Observation.latents: expected float shape [N, {', '.join(map(str, want))}], "
                    f"got {obs.latents.dtype} {list(obs.latents.shape)}"
                )

    def _check_actions(self, actions: torch.Tensor, n: int, name: str = "actions") -> None:
        c = self.config
        want = f"[{n}, {c.chunk_size}, {c.action_dim}]"
        if not isinstance(actions, torch.Tensor) or not actions.is_floating_point():
            raise TypeError(f"{name}: expected a float tensor of shape {want}")
        if tuple(actions.shape) != (n, c.chunk_size, c.action_dim):
            raise ValueError(f"{name}: expected shape {want}, got {list(actions.shape)}")

    # ------------------------------------------------------------------ images
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> latents [N, C, h, w] in (-1, 1)."""
        x = preprocess_images(images.to(self.device), self.config.image_size, "images")
        return self.image_tokenizer.encode(x)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [N, C, h, w] -> uint8 images [N, H, W, 3]."""
        c = self.config
        want = (c.latent_channels, c.latent_size, c.latent_size)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != want:
            raise ValueError(f"latents: expected shape [N, {', '.join(map(str, want))}], got {list(latents.shape)}")
        return postprocess_images(self.image_tokenizer.decode(latents))

    def _latents_of(self, obs: Observation) -> torch.Tensor:
        if obs.latents is not None:
            return obs.latents.to(self.device, torch.float32)
        return self.encode_images(obs.images)

    # ------------------------------------------------------------------ backbone
    def _embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(ids) + self.segment_emb.weight[SEG_SUBTASK]

    def _prefix(self, obs: Observation, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings [N, P, D] and mask bool [N, P] of instruction | latents | state | [BOS]."""
        return self._prefix_of(obs.instructions, obs.states, latents)

    def _prefix_of(
        self, instructions: list[str], states: torch.Tensor, latents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_prefix` of N instructions, states [N, S] and latents [N, C, h, w] (states may carry gradients)."""
        proc = self._require_processor()
        n, dev = len(instructions), self.device
        instr_ids, instr_mask = proc.encode_instructions(list(instructions), dev)
        emb_instr = self.backbone.get_input_embeddings()(instr_ids) + self.segment_emb.weight[SEG_INSTRUCTION]
        emb_lat = self.latent_proj(patchify(latents, self.config.latent_patch)) + self.latent_pos  # [N, h*w/p^2, D]
        emb_lat = emb_lat + self.segment_emb.weight[SEG_LATENT]
        state_n = (states.to(dev) - self.state_mean) / self.state_std
        emb_state = (self.state_proj(state_n) + self.segment_emb.weight[SEG_STATE])[:, None]  # [N, 1, D]
        emb_bos = self._embed_text(torch.full((n, 1), BOS_ID, dtype=torch.long, device=dev))
        emb = torch.cat([emb_instr, emb_lat, emb_state, emb_bos], dim=1)
        mask = torch.cat(
            [instr_mask, torch.ones(n, emb.shape[1] - instr_mask.shape[1], dtype=torch.bool, device=dev)], 1
        )
        return emb, mask

    def _run(self, emb: torch.Tensor, mask: torch.Tensor, cache: DynamicCache | None = None) -> torch.Tensor:
        """Backbone states [N, T, D] of the last T = emb.shape[1] positions; `mask` covers cache + new tokens."""
        position_ids = (mask.long().cumsum(1) - 1).clamp_min(0)[:, -emb.shape[1] :]
        out = self.backbone(
            inputs_embeds=emb,
            attention_mask=mask.long(),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def _subtask_logits(self, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
        """Logits [..., V] / temperature, with [PAD] and [BOS] never generated."""
        logits = self.subtask_head(hidden) / temperature
        logits[..., PAD_ID] = float("-inf")
        logits[..., BOS_ID] = float("-inf")
        return logits

    @torch.no_grad()
    def _generate_subtask(self, emb, mask, sample: bool, temperature: float, generator) -> tuple[torch.Tensor, ...]:
        """Autoregressive subtask after the prefix, with a KV cache; batch rows stop at [EOS].

        Returns:
            ids long [N, L] (pad after [EOS]), mask bool [N, L] (True on real tokens, [EOS] included).
        """
        n, max_len = emb.shape[0], self.config.max_subtask_tokens
        cache = DynamicCache(config=self.backbone.config)
        hidden = self._run(emb, mask, cache)[:, -1]
        done = torch.zeros(n, dtype=torch.bool, device=emb.device)
        ids, live_mask = [], []
        for step in range(max_len):
            logits = self._subtask_logits(hidden, temperature)
            if sample:
                tok = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            else:
                tok = logits.argmax(-1)
            live = ~done
            tok = torch.where(live, tok, torch.full_like(tok, PAD_ID))
            ids.append(tok)
            live_mask.append(live)
            done = done | (tok == EOS_ID)
            if bool(done.all()) or step == max_len - 1:
                break
            mask = torch.cat([mask, live[:, None]], dim=1)
            hidden = self._run(self._embed_text(tok[:, None]), mask, cache)[:, -1]
        return torch.stack(ids, 1), torch.stack(live_mask, 1)

    def _teacher_forced(self, emb, mask, subtask_ids, subtask_mask, temperature: float = 1.0):
        """Run prefix | subtask | meta-queries in one pass.

        Returns:
            meta states [N, M, D], per-token subtask log-probs [N, L] (0 on padding), subtask logits [N, L, V].
        """
        n, p = emb.shape[:2]
        m = self.config.num_meta_queries
        length = subtask_ids.shape[1]
        meta_in = (self.meta_queries + self.segment_emb.weight[SEG_META]).expand(n, m, -1)
        full = torch.cat([emb, self._embed_text(subtask_ids), meta_in], dim=1)  # [N, P+L+M, D]
        full_mask = torch.cat([mask, subtask_mask, torch.ones(n, m, dtype=torch.bool, device=emb.device)], dim=1)
        hidden = self._run(full, full_mask)
        # position P-1 ([BOS]) predicts token 0, ..., position P+L-2 predicts token L-1
        logits = self._subtask_logits(hidden[:, p - 1 : p - 1 + length], temperature)
        logp = logits.log_softmax(-1).gather(-1, subtask_ids[..., None])[..., 0]
        logp = torch.where(subtask_mask, logp, torch.zeros_like(logp))
        return hidden[:, -m:], logp, logits

    # ------------------------------------------------------------------ action expert
    def _flow_sigma(self, temperature: float) -> float:
        c = self.config
        return max(temperature * c.flow_sigma * math.sqrt(1.0 / c.flow_steps), c.flow_sigma_min)

    def _flow_terms(self, meta: torch.Tensor, chain: torch.Tensor, temperature: float) -> torch.Tensor:
        """Per-transition log-probs [N, K, H, A] of a stored chain [N, K+1, H, A] (all K steps in one batch)."""
        n, k1 = chain.shape[:2]
        k = k1 - 1
        ctx = self.action_expert.context_of(meta)  # [N, hidden]
        x = chain[:, :-1].reshape(n * k, *chain.shape[2:])  # [N*K, H, A]
        t = (torch.arange(k, device=chain.device, dtype=chain.dtype) / k).repeat(n)  # [N*K]
        v = self.action_expert.velocity(ctx.repeat_interleave(k, 0), x, t)
        mu = (x + v / k).view(n, k, *chain.shape[2:])
        sigma = torch.tensor(self._flow_sigma(temperature), device=chain.device, dtype=chain.dtype)
        return gaussian_log_prob(chain[:, 1:], mu, sigma)

    def _sample_actions(self, meta, sample: bool, temperature: float, generator):
        """Action chunk [N, H, A] (env units), per-element log-prob terms, extras."""
        n, c = meta.shape[0], self.config
        shape = (n, c.chunk_size, c.action_dim)
        if c.action_head == "gaussian":
            mean = self.action_expert(meta) * self.action_std + self.action_mean  # [N, H, A]
            std = self.action_expert.std() * temperature  # [H, A]
            eps = torch.randn(shape, generator=generator, device=meta.device) if sample else torch.zeros(shape)
            actions = mean + std * eps.to(meta.device)
            # The mean chunk travels with the sample: what greedy evaluation would execute from this observation.
            return actions, gaussian_log_prob(actions, mean, std), {"mean": mean}
        # flow: stochastic Euler chain from x_0 ~ N(0, I) (x_0 = 0 and no noise when sample=False)
        ctx = self.action_expert.context_of(meta)
        sigma, k = self._flow_sigma(temperature), c.flow_steps
        x = torch.randn(shape, generator=generator, device=meta.device) if sample else meta.new_zeros(shape)
        chain = [x]
        for i in range(k):
            t = torch.full((n,), i / k, device=meta.device)
            x = x + self.action_expert.velocity(ctx, x, t) / k
            if sample:
                x = x + sigma * torch.randn(shape, generator=generator, device=meta.device)
            chain.append(x)
        chain_t = torch.stack(chain, 1)  # [N, K+1, H, A]
        actions = chain_t[:, -1] * self.action_std + self.action_mean
        return actions, self._flow_terms(meta, chain_t, temperature), {"chain": chain_t}

    def _action_terms(
        self, meta: torch.Tensor, sample: ActionSample, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-element log-prob terms of `sample` and the mean chunk [N, H, A] (gaussian; None for flow)."""
        if self.config.action_head == "gaussian":
            mean = self.action_expert(meta) * self.action_std + self.action_mean
            std = self.action_expert.std() * temperature
            return gaussian_log_prob(sample.actions.to(meta.device), mean, std), mean
        if "chain" not in sample.extras:
            raise KeyError("ActionSample.extras['chain'] [N, K+1, H, A] is needed to rescore a flow-head sample")
        return self._flow_terms(meta, sample.extras["chain"].to(meta.device), temperature), None

    # ------------------------------------------------------------------ world expert
    def _world(self, meta, latents, states, actions, full_states=None) -> WorldPrediction:
        """The World Expert's prediction; the full state is predicted only from a given current one."""
        state_n = (states.to(self.device) - self.state_mean) / self.state_std
        actions_n = (actions.to(self.device) - self.action_mean) / self.action_std
        full_n = self._full_state_norm(full_states, len(states))
        next_latents, d_state, success, d_full = self.world_expert(meta, latents, state_n, actions_n, full_n)
        next_states = states.to(self.device) + d_state * self.state_std
        next_full = None
        if full_n is not None:
            next_full = (full_states.to(self.device) + d_full * self.full_state_std).float()
        return WorldPrediction(
            latents=next_latents, states=next_states.float(), success_logits=success, full_states=next_full
        )

    def _full_state_norm(self, full_states: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """[N, F] normalised full states, or None when the World Expert models none or none is given."""
        F_ = self.config.full_state_dim
        if F_ == 0 or full_states is None:
            return None
        if tuple(full_states.shape) != (n, F_):
            raise ValueError(
                f"full_states: expected shape [{n}, {F_}] (full_state_dim of the World Expert), "
                f"got {list(full_states.shape)}"
            )
        return (full_states.to(self.device).float() - self.full_state_mean) / self.full_state_std

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def act(
        self,
        obs: Observation,
        sample: bool = True,
        temperature: float = 1.0,
        world: bool = False,
        num_candidates: int = 1,
        scorer=None,
        generator: torch.Generator | None = None,
    ) -> ActionSample:
        """Generate a subtask and an action chunk for N observations.

        Args:
            obs: N observations (`latents` used instead of the images when set).
            sample: sample subtask tokens and actions; False gives the greedy subtask and the mean chunk
                (flow: the noise-free chain from x_0 = 0), deterministic.
            temperature: scales the subtask logits (divides) and the action std / flow noise (multiplies); > 0.
            world: also predict the world after the chunk, returned in `extras` as `world_latents` [N, C, h, w],
                `world_states` [N, S], `world_success_logits` [N]. Does not change the actions.
            num_candidates: K > 1 enables test-time scaling: K chunks per row are imagined and scored, the best is
                returned (its `extras["tts_scores"]` [N, K] holds all scores).
            scorer: `scorer(obs, candidates: list[ActionSample], predictions: list[WorldPrediction]) -> [N, K]`;
                default: the World Expert's success logit (no decoding).
            generator: torch.Generator for reproducible sampling.

        Returns:
            ActionSample with actions [N, H, A], log_prob [N] (action chunk only), log_prob_terms [N, H, A]
            (gaussian) or [N, K, H, A] (flow transitions; extras["chain"] [N, K+1, H, A]), subtask ids/mask/
            log-probs [N, L] and text.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}; use sample=False for greedy actions")
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self._check_obs(obs)
        if num_candidates > 1:
            return self._act_best_of(obs, sample, temperature, num_candidates, scorer, generator)
        obs = obs.to(self.device)
        latents = self._latents_of(obs)
        emb, mask = self._prefix(obs, latents)
        ids, sub_mask = self._generate_subtask(emb, mask, sample, temperature, generator)
        meta, sub_logp, _ = self._teacher_forced(emb, mask, ids, sub_mask, temperature)
        actions, terms, extras = self._sample_actions(meta, sample, temperature, generator)
        if world:
            pred = self._world(meta, latents, obs.states, actions, obs.full_states)
            extras.update(
                world_latents=pred.latents, world_states=pred.states, world_success_logits=pred.success_logits
            )
            if pred.full_states is not None:
                extras["world_full_states"] = pred.full_states
        return ActionSample(
            actions=actions,
            log_prob=terms.flatten(1).sum(1),
            log_prob_terms=terms,
            subtask_ids=ids,
            subtask_mask=sub_mask,
            subtask_log_probs=sub_logp,
            subtask_text=self._require_processor().decode_subtasks(ids, sub_mask),
            extras=extras,
        )

    def _act_best_of(self, obs, sample, temperature, k, scorer, generator) -> ActionSample:
        """Test-time scaling: K candidates per row (rows n*K + j), imagined, scored, best kept."""
        n = len(obs)
        cand = self.act(obs.repeat_interleave(k), sample=sample, temperature=temperature, world=True,
                        generator=generator)  # fmt: skip
        e = cand.extras
        if scorer is None:
            scores = e["world_success_logits"].view(n, k)
        else:
            images = self.decode_latents(e["world_latents"])
            candidates, predictions = [], []
            for j in range(k):
                rows = torch.arange(n) * k + j
                candidates.append(cand.index(rows))
                predictions.append(
                    WorldPrediction(
                        latents=e["world_latents"][rows],
                        states=e["world_states"][rows],
                        success_logits=e["world_success_logits"][rows],
                        images=images[rows],
                        full_states=e["world_full_states"][rows] if "world_full_states" in e else None,
                    )
                )
            scores = torch.as_tensor(scorer(obs, candidates, predictions), dtype=torch.float32, device=self.device)
            if tuple(scores.shape) != (n, k):
                raise ValueError(f"scorer: expected scores of shape [{n}, {k}], got {list(scores.shape)}")
        best = scores.argmax(1)  # [N]
        out = cand.index(torch.arange(n, device=best.device) * k + best)
        out.extras["tts_scores"] = scores
        return out

    def log_prob(self, obs: Observation, sample: ActionSample, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """Log-probs of a stored sample under the current weights (with gradients), teacher-forcing its subtask.

        Returns:
            {"action": [N], "subtask": [N] (summed over tokens), "subtask_tokens": [N, L],
             "action_terms": [N, H, A] or [N, K, H, A]} and, for the gaussian head, "action_mean" [N, H, A].
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self._check_obs(obs)
        self._check_actions(sample.actions, len(obs), "ActionSample.actions")
        obs = obs.to(self.device)
        latents = self._latents_of(obs)
        emb, mask = self._prefix(obs, latents)
        ids, sub_mask = sample.subtask_ids.to(self.device), sample.subtask_mask.to(self.device)
        meta, sub_logp, _ = self._teacher_forced(emb, mask, ids, sub_mask, temperature)
        terms, mean = self._action_terms(meta, sample, temperature)
        out = {
            "action": terms.flatten(1).sum(1),
            "subtask": sub_logp.sum(1),
            "subtask_tokens": sub_logp,
            "action_terms": terms,
        }
        if mean is not None:
            out["action_mean"] = mean
        return out

    @torch.no_grad()
    def imagine(
        self, obs: Observation, actions: torch.Tensor, decode: bool = True, sample: ActionSample | None = None
    ) -> WorldPrediction:
        """World Expert prediction after executing `actions` [N, H, A] from `obs`.

        The meta-query states are recomputed by this model with the subtask of `sample` (teacher-forced) when
        given, else with the greedy subtask. Returns latents [N, C, h, w], states [N, S], success_logits [N] and,
        when `decode`, uint8 subgoal images [N, H, W, 3].
        """
        self._check_obs(obs)
        self._check_actions(actions, len(obs))
        obs = obs.to(self.device)
        latents = self._latents_of(obs)
        emb, mask = self._prefix(obs, latents)
        if sample is None:
            ids, sub_mask = self._generate_subtask(emb, mask, False, 1.0, None)
        else:
            ids, sub_mask = sample.subtask_ids.to(self.device), sample.subtask_mask.to(self.device)
        meta = self._teacher_forced(emb, mask, ids, sub_mask)[0]
        pred = self._world(meta, latents, obs.states, actions, obs.full_states)
        if decode:
            pred.images = self.decode_latents(pred.latents)
        return pred

    @torch.no_grad()
    def next_observation(self, obs: Observation, pred: WorldPrediction) -> Observation:
        """The imagined next observation: subgoal image, predicted state and latents; text unchanged.

        The image is `pred.images` when decoded, else a `LazyImages` that decodes the latents only if read (the
        policy acts on `latents` and never reads it).
        """
        s = self.config.image_size
        images = pred.images if pred.images is not None else LazyImages(pred.latents, self.decode_latents, (s, s, 3))
        return Observation(
            images=images,
            states=pred.states.float(),
            instructions=list(obs.instructions),
            task_names=list(obs.task_names),
            latents=pred.latents,
            full_states=pred.full_states,
        )

    def forward(
        self,
        obs: Observation | None = None,
        sample: ActionSample | None = None,
        temperature: float = 1.0,
        sft_batch: dict | None = None,
    ) -> dict[str, torch.Tensor]:
        """`log_prob(obs, sample, temperature)`, or `sft_losses(sft_batch)` when `sft_batch` is given.

        A single entry point so that wrappers (DDP, accelerate) see the gradients of both uses.
        """
        if sft_batch is not None:
            return self.sft_losses(sft_batch)
        if obs is None or sample is None:
            raise ValueError("WLAPolicy.forward: pass obs= and sample= (log-probs) or sft_batch= (SFT losses)")
        return self.log_prob(obs, sample, temperature)

    # ------------------------------------------------------------------ SFT
    def tokenizer_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Image-tokenizer pre-stage: reconstruction of `image` and `next_image` [N, H, W, 3] from noisy latents.

        Returns:
            "loss" (= "loss/recon") and "train/recon_psnr" (dB, full frame).
        """
        c, dev = self.config, self.device
        x = preprocess_images(batch["image"].to(dev), c.image_size, "batch['image']")
        if "next_image" in batch:
            x = torch.cat([x, preprocess_images(batch["next_image"].to(dev), c.image_size, "batch['next_image']")])
        mse, psnr = self.image_tokenizer.recon_loss(x, c.latent_noise_std)
        out = {"loss": mse, "loss/recon": mse, "train/recon_psnr": psnr}
        if self.latent_probe is not None:
            full = [batch["full_state"]] + ([batch["next_full_state"]] if "next_image" in batch else [])
            out["loss/latent_state"] = self.latent_state_loss(self.image_tokenizer.encode(x), torch.cat(full))
            out["loss"] = mse + c.latent_state_weight * out["loss/latent_state"]
        return out

    def latent_state_loss(self, latents: torch.Tensor, full_states: torch.Tensor) -> torch.Tensor:
        """MSE of the latent state probe: normalised full states [N, F] read from image latents [N, C, h, w]."""
        if self.latent_probe is None:
            raise RuntimeError("latent_state_loss: this policy has no latent probe (latent_state_weight = 0)")
        target = self._full_state_norm(torch.as_tensor(full_states), latents.shape[0])
        return F.mse_loss(self.latent_probe(latents), target)

    def meta_state_loss(self, batch: dict, noise: bool = True) -> torch.Tensor:
        """MSE of the backbone state probe on single frames (`frame_losses`' "loss/meta_state_frames")."""
        return self.frame_losses({k: v for k, v in batch.items() if k != "actions"}, noise)["loss/meta_state_frames"]

    def frame_losses(self, batch: dict, noise: bool = True) -> dict[str, torch.Tensor]:
        """Losses on single frames outside the demonstrations: the backbone state probe's MSE (the normalised full state
        read from the meta-query states) and, for frames labelled with an expert's chunk, the Action Expert's loss.

        Used on frames outside the demonstrations (`rollout.collect.state_frames`: one frame per seeded layout), so
        that the backbone learns to read goals and objects from the frame instead of recalling them from an episode.
        The frame is encoded without gradient and noised as in `sft_losses`; the backbone reads it with the given
        subtask teacher-forced.

        Args:
            batch: `image` uint8 [N, H, W, 3], `state` [N, S], `full_state` [N, F], `instruction` and `subtask`
                (N strings each); optional `full_state_weight` float [N, F], a weight per row and dimension of the
                squared error (e.g. the inverse variance within the row's task, so that a goal that varies little
                across the dataset still counts); without it, the plain MSE.
                Optional `actions` [N, H, A]: the chunk an expert takes from the frame, trained as SFT trains the
                demonstrations' chunks.
            noise: add SFT's latent noise (`latent_noise_std`) to the frames' latents; false reads them clean, as
                the policy reads its frames when it acts.

        Returns:
            "loss/meta_state_frames", plus "loss/action_frames" when the batch has `actions`.
        """
        if self.meta_probe is None:
            raise RuntimeError("meta_state_loss: this policy has no backbone state probe (meta_state_weight = 0)")
        c, dev = self.config, self.device
        proc = self._require_processor()
        n = batch["image"].shape[0]
        x = preprocess_images(batch["image"].to(dev), c.image_size, "batch['image']")
        with torch.no_grad():
            z = self.image_tokenizer.encode(x)
        z_in = (z + c.latent_noise_std * torch.randn_like(z)).clamp(-1, 1) if noise else z
        state = torch.as_tensor(batch["state"], dtype=torch.float32, device=dev)
        emb, mask = self._prefix_of(list(batch["instruction"]), state, z_in)
        ids, sub_mask = proc.encode_subtasks(list(batch["subtask"]), dev)
        meta, _, _ = self._teacher_forced(emb, mask, ids, sub_mask)
        target = self._full_state_norm(torch.as_tensor(batch["full_state"]), n)
        err = (self.meta_probe(meta) - target) ** 2
        if "full_state_weight" in batch:
            weight = torch.as_tensor(batch["full_state_weight"], dtype=torch.float32, device=dev)
            if weight.shape != err.shape:
                raise ValueError(
                    f"batch['full_state_weight']: expected shape {list(err.shape)}, got {list(weight.shape)}"
                )
            err = err * weight
        out = {"loss/meta_state_frames": err.mean()}
        if "actions" in batch:
            actions = torch.as_tensor(batch["actions"], dtype=torch.float32)
            self._check_actions(actions, n, "batch['actions']")
            m = torch.ones(n, c.chunk_size, 1, device=dev)
            out["loss/action_frames"] = self._action_losses(meta, actions, m)["loss/action"]
        return out

    def _action_losses(self, meta: torch.Tensor, actions: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
        """The Action Expert's SFT loss on recorded chunks `actions` [N, H, A] from the meta-query states, with a
        mask or weight `m` [N, H, 1]: "loss/action" (gaussian head: plus "loss/action_mse", "loss/action_nll" and
        "train/action_std")."""
        c, dev = self.config, self.device
        out: dict[str, torch.Tensor] = {}
        actions_n = (actions.to(dev) - self.action_mean) / self.action_std
        denom = (m.sum() * c.action_dim).clamp_min(1.0)
        if c.action_head == "gaussian":
            mean_n = self.action_expert(meta)
            out["loss/action_mse"] = (((mean_n - actions_n) ** 2) * m).sum() / denom
            # log-std is fitted by NLL around the detached mean: the mean's gradient stays well scaled as std shrinks
            mean = mean_n.detach() * self.action_std + self.action_mean
            nll = -gaussian_log_prob(actions.to(dev), mean, self.action_expert.std())
            out["loss/action_nll"] = (nll * m).sum() / denom
            out["loss/action"] = out["loss/action_mse"] + out["loss/action_nll"]
            out["train/action_std"] = self.action_expert.std().mean().detach()
        else:
            # conditional flow matching (rectified flow): x_t = (1-t) x_0 + t x_1, target velocity x_1 - x_0
            t = torch.rand(actions_n.shape[0], device=dev)
            x0 = torch.randn_like(actions_n)
            xt = (1 - t)[:, None, None] * x0 + t[:, None, None] * actions_n
            v = self.action_expert.velocity(self.action_expert.context_of(meta), xt, t)
            out["loss/action"] = (((v - (actions_n - x0)) ** 2) * m).sum() / denom
        return out

    def sft_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Joint SFT losses on a collated window batch (`wlarl.data.collate_windows`).

        A batch of K-chunk windows (`SFTWindows(..., chunks=K)`: a chunk axis after the row axis) trains the World
        Expert open loop over its K chunks, as `open_loop_world_losses` does; everything else reads chunk 1 (the real
        observation at t and the chunk after it), exactly as with one-chunk windows.

        Args:
            batch: `image` uint8 [N, H, W, 3], `state` [N, S], `actions` [N, H, A], optional `action_mask` bool
                [N, H], `next_image` uint8 [N, H, W, 3], `next_state` [N, S], `next_success` bool [N], `full_state` and
                `next_full_state` [N, F] (when `full_state_dim` > 0), `subtask`,
                `instruction`, `task_name` (N strings each), optional `action_weight` float [N] (0 drops a row
                from the action loss, e.g. for random-action segments). K-chunk windows: see `open_loop_world_losses`.

        Returns:
            "loss" (weighted sum), "loss/action", "loss/world_latent", "loss/world_state", "loss/world_success",
            "loss/subtask", "loss/recon", "loss/world_full_state" (when `full_state_dim` > 0), plus
            "train/recon_psnr" and (gaussian) "train/action_std". With K-chunk windows the world terms are the means
            over the chunks, and the per-chunk keys and "loss/world_open_loop" of `open_loop_world_losses` come too.
        """
        c, dev = self.config, self.device
        proc = self._require_processor()
        batch, chunks = self._chunk_view(batch, "sft_losses")
        n = batch["image"].shape[0]
        x = preprocess_images(batch["image"].to(dev), c.image_size, "batch['image']")
        x_next = preprocess_images(batch["next_image"][:, 0].to(dev), c.image_size, "batch['next_image']")
        state = torch.as_tensor(batch["state"], dtype=torch.float32, device=dev)
        actions = batch["actions"][:, 0]  # [N, H, A] the chunk at t
        action_mask = batch.get("action_mask")
        m = torch.ones(n, c.chunk_size, device=dev) if action_mask is None else action_mask[:, 0].to(dev).float()
        if "action_weight" in batch:
            m = m * torch.as_tensor(batch["action_weight"], dtype=torch.float32, device=dev)[:, None]
        m = m[..., None]  # [N, H, 1]
        out: dict[str, torch.Tensor] = {}

        # image tokenizer: reconstruct the frames of the first k rows from noisy latents (the decoder must tolerate
        # predicted latents); the other rows are encoded without gradient (cheaper on CPU)
        k = max(1, round(n * c.recon_fraction))
        x_rec = torch.cat([x[:k], x_next[:k]])  # [2k, 3, H, W]
        z_rec = self.image_tokenizer.encode(x_rec)
        x_hat = self.image_tokenizer.decode(z_rec + c.latent_noise_std * torch.randn_like(z_rec))
        out["loss/recon"] = F.mse_loss(x_hat, x_rec)
        out["train/recon_psnr"] = 10 * torch.log10(4.0 / out["loss/recon"].detach().clamp_min(1e-10))
        if self.latent_probe is not None:
            full = torch.cat(
                [torch.as_tensor(batch["full_state"])[:k], torch.as_tensor(batch["next_full_state"])[:k, 0]]
            )
            out["loss/latent_state"] = self.latent_state_loss(z_rec, full)
        # policy and world model see detached latents: the tokenizer is shaped by reconstruction only
        z, z_next = self._encode_window(batch, x)
        z_in = (z + c.latent_noise_std * torch.randn_like(z)).clamp(-1, 1)

        # backbone, teacher-forcing the recorded subtask
        emb, mask = self._prefix_of(list(batch["instruction"]), state, z_in)
        ids, sub_mask = proc.encode_subtasks(list(batch["subtask"]), dev)
        meta, sub_logp, _ = self._teacher_forced(emb, mask, ids, sub_mask)
        out["loss/subtask"] = -sub_logp.sum() / sub_mask.sum()
        if self.meta_probe is not None:
            target = self._full_state_norm(torch.as_tensor(batch["full_state"]), n)
            out["loss/meta_state"] = F.mse_loss(self.meta_probe(meta), target)

        out.update(self._action_losses(meta, actions, m))

        # world expert, teacher-forced on the recorded chunk (clean and noisy episodes alike); open loop over K chunks
        world = self._open_loop_world(batch, chunks, meta, z_in, z_next, detach=True, reencode=False)
        out.update(world if chunks > 1 else {k: world[k] for k in WORLD_TERMS if k in world})

        out["loss"] = (
            c.action_loss_weight * out["loss/action"]
            + self.world_loss(out)
            + c.subtask_weight * out["loss/subtask"]
            + c.recon_weight * out["loss/recon"]
        )
        if "loss/latent_state" in out:
            out["loss"] = out["loss"] + c.latent_state_weight * out["loss/latent_state"]
        if "loss/meta_state" in out:
            out["loss"] = out["loss"] + c.meta_state_weight * out["loss/meta_state"]
        return out

    # ------------------------------------------------------------------ open-loop World-Expert training
    def open_loop_world_losses(
        self, batch: dict, chunks: int | None = None, detach: bool = True, reencode: bool = False
    ) -> dict[str, torch.Tensor]:
        """World-Expert losses over K chunks open loop, as imagination runs it: chunk 1 from the real observation at
        t, chunks 2..K from the World Expert's own previous prediction (latent, state, full state), each chunk
        executing the real recorded actions and scored against the real target after it with the terms of
        `sft_losses` (latent MSE, normalised state-change MSE, success BCE, full-state MSE); terms averaged over the
        chunks. `world_loss(out)` weights them as in SFT (= "loss/world_open_loop"). With K = 1 it is the World-Expert
        part of `sft_losses` on the same batch.

        As in imagination, the backbone re-reads each predicted observation (its meta-query states condition the
        next chunk), with the subtask recorded at the chunk's start teacher-forced (imagination generates its own
        greedy one); chunk 1's latents get the SFT latent noise, fed-back predictions none (their error is the
        noise). Chunks that start past their episode's end (`chunk_mask` False) are left out of that chunk's terms.

        Args:
            batch: collated K-chunk windows (`SFTWindows(ep_ds, H, chunks=K)`): `image` uint8 [N, H_img, W, 3],
                `state` [N, S], `actions` [N, K, H, A], `next_image` uint8 [N, K, H_img, W, 3], `next_state`
                [N, K, S], `next_success` bool [N, K], `chunk_subtasks` (N lists of K strings), optional `chunk_mask`
                bool [N, K], `full_state` [N, F] / `next_full_state` [N, K, F] (when `full_state_dim` > 0),
                `instruction` (N strings); or a one-chunk batch (`sft_losses`' keys), read as K = 1.
            chunks: K, how many of the batch's chunks to roll out (default: all).
            detach: feed each prediction back without gradient (default). Each chunk's loss then trains the step that
                produced it from the inputs imagination will feed, not the earlier steps through a chain of
                tanh/atanh residuals (whose gradient grows as latents saturate): the "pushforward" trick of
                Brandstetter et al. 2022 (Message Passing Neural PDE Solvers). False backpropagates through the
                rollout (BPTT).
            reencode: feed back encode(decode(prediction)) through uint8 frames, as `ImaginationEngine(reencode=True)`
                and `rollout.imagined.advance` do (always without gradient); default the raw predicted latent, as
                `advance(reencode=False)` and `rollout.verify.world_fidelity` do.

        Returns:
            "loss" (= "loss/world_open_loop", the weighted world loss), the chunk means "loss/world_latent",
            "loss/world_state", "loss/world_success", "loss/world_full_state" (when `full_state_dim` > 0), and per
            chunk k = 1..K "loss/world_chunk{k}" (weighted), "loss/world_latent_chunk{k}", "loss/world_state_chunk{k}"
            (a chunk no row reaches has no keys).
        """
        c, dev = self.config, self.device
        proc = self._require_processor()
        batch, available = self._chunk_view(batch, "open_loop_world_losses")
        K = available if chunks is None else int(chunks)
        if not 1 <= K <= available:
            raise ValueError(
                f"open_loop_world_losses: chunks={chunks} must lie in [1, {available}] (the chunks of the batch; "
                "build windows with wlarl.data.SFTWindows(..., chunks=K))"
            )
        x = preprocess_images(batch["image"].to(dev), c.image_size, "batch['image']")
        z, z_next = self._encode_window(batch, x, K)
        z_in = (z + c.latent_noise_std * torch.randn_like(z)).clamp(-1, 1)
        state = torch.as_tensor(batch["state"], dtype=torch.float32, device=dev)
        emb, mask = self._prefix_of(list(batch["instruction"]), state, z_in)
        ids, sub_mask = proc.encode_subtasks([s[0] for s in batch["chunk_subtasks"]], dev)
        meta = self._teacher_forced(emb, mask, ids, sub_mask)[0]
        out = self._open_loop_world(batch, K, meta, z_in, z_next, detach=detach, reencode=reencode)
        out["loss"] = out["loss/world_open_loop"]
        return out

    def _chunk_view(self, batch: dict, name: str) -> tuple[dict, int]:
        """The window batch with a chunk axis after the row axis, and its K; a one-chunk batch reads as K = 1."""
        c = self.config
        for key in ("image", "state", "actions", "next_image", "next_state", "next_success", "instruction"):
            if key not in batch:
                raise KeyError(f"{name}: batch lacks {key!r} (expected the keys of wlarl.data.collate_windows)")
        n = batch["image"].shape[0]
        state = torch.as_tensor(batch["state"])
        if tuple(state.shape) != (n, c.state_dim):
            raise ValueError(f"batch['state']: expected shape [{n}, {c.state_dim}], got {list(state.shape)}")
        actions = torch.as_tensor(batch["actions"], dtype=torch.float32)
        out = dict(batch)
        if actions.ndim == 3:  # one-chunk windows
            if "subtask" not in batch:
                raise KeyError(f"{name}: batch lacks 'subtask' (expected the keys of wlarl.data.collate_windows)")
            self._check_actions(actions, n, "batch['actions']")
            out["actions"] = actions[:, None]
            for key in ("action_mask", "next_image", "next_state", "next_full_state", "next_success", "chunk_mask"):
                if batch.get(key) is not None:
                    out[key] = torch.as_tensor(batch[key])[:, None]
            out["chunk_subtasks"] = [[s] for s in batch["subtask"]]
            return out, 1
        want = f"[{n}, K, {c.chunk_size}, {c.action_dim}]"
        if actions.ndim != 4 or tuple(actions.shape[2:]) != (c.chunk_size, c.action_dim) or actions.shape[0] != n:
            raise ValueError(
                f"batch['actions']: expected shape [{n}, {c.chunk_size}, {c.action_dim}] (one chunk) or {want} "
                f"(K chunks), got {list(actions.shape)}"
            )
        K = actions.shape[1]
        out["actions"] = actions
        for key, rest in (("next_image", 3), ("next_state", 1), ("next_success", 0), ("action_mask", 1),
                          ("chunk_mask", 0), ("next_full_state", 1)):  # fmt: skip
            if batch.get(key) is None:
                continue
            value = torch.as_tensor(batch[key])
            if value.ndim != 2 + rest or tuple(value.shape[:2]) != (n, K):
                raise ValueError(
                    f"batch[{key!r}]: expected shape [{n}, {K}, ...] with {rest} trailing dims (K-chunk windows of "
                    f"wlarl.data.SFTWindows(..., chunks=K)), got {list(value.shape)}"
                )
            out[key] = value
        subtasks = batch.get("chunk_subtasks")
        if subtasks is None or len(subtasks) != n or any(len(s) != K for s in subtasks):
            raise KeyError(f"{name}: K-chunk windows need 'chunk_subtasks' (N={n} lists of K={K} strings)")
        return out, K

    @torch.no_grad()
    def _encode_window(
        self, batch: dict, x: torch.Tensor, chunks: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (no gradient) of the frame at t, [N, C, h, w], and of the real targets of the first K chunks,
        [N, K, C, h, w], encoded in one pass (x: the preprocessed frames at t)."""
        c = self.config
        next_image = batch["next_image"][:, :chunks] if chunks is not None else batch["next_image"]
        n, K = next_image.shape[:2]
        x_next = preprocess_images(next_image.flatten(0, 1).to(self.device), c.image_size, "batch['next_image']")
        z_all = self.image_tokenizer.encode(torch.cat([x, x_next]))  # [N + N*K, C, h, w]
        return z_all[:n], z_all[n:].view(n, K, *z_all.shape[1:])

    def _open_loop_world(
        self, batch: dict, chunks: int, meta: torch.Tensor, z_in: torch.Tensor, z_next: torch.Tensor,
        detach: bool, reencode: bool,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """The World Expert rolled out over `chunks` K from chunk 1's meta-query states `meta` [N, M, D] and input
        latents `z_in` [N, C, h, w], scored against the real targets (`z_next` [N, K, C, h, w] and the batch's
        chunk view, see `_chunk_view`); see `open_loop_world_losses` for the rules and the keys returned."""
        c, dev = self.config, self.device
        proc = self._require_processor()
        n, K = z_in.shape[0], int(chunks)
        state = torch.as_tensor(batch["state"], dtype=torch.float32, device=dev)  # [N, S]
        next_state = batch["next_state"][:, :K].to(dev, torch.float32)  # [N, K, S]
        actions_n = (batch["actions"][:, :K].to(dev) - self.action_mean) / self.action_std  # [N, K, H, A]
        success = batch["next_success"][:, :K].to(dev).float()  # [N, K]
        chunk_mask = batch.get("chunk_mask")
        valid = None if chunk_mask is None else chunk_mask[:, :K].to(dev, torch.bool)  # [N, K]
        full_n = next_full_n = None
        if c.full_state_dim > 0:
            if batch.get("full_state") is None or batch.get("next_full_state") is None:
                raise KeyError(
                    f"World-Expert losses: the World Expert models full states (full_state_dim={c.full_state_dim}) "
                    "but the batch lacks 'full_state'/'next_full_state' (wlarl.data.SFTWindows of episodes with "
                    "full_state)"
                )
            full_n = self._full_state_norm(torch.as_tensor(batch["full_state"], dtype=torch.float32), n)  # [N, F]
            nf = torch.as_tensor(batch["next_full_state"], dtype=torch.float32)[:, :K].flatten(0, 1)  # [N*K, F]
            next_full_n = self._full_state_norm(nf, n * K).view(n, K, -1)  # [N, K, F]
        instructions = list(batch["instruction"])
        per_chunk: list[dict[str, torch.Tensor]] = []
        out: dict[str, torch.Tensor] = {}
        for k in range(K):
            if k > 0:  # the backbone reads the predicted observation, as `imagine` does after `advance`
                emb, mask = self._prefix_of(instructions, state, z_in)
                ids, sub_mask = proc.encode_subtasks([s[k] for s in batch["chunk_subtasks"]], dev)
                meta = self._teacher_forced(emb, mask, ids, sub_mask)[0]
            state_n = (state - self.state_mean) / self.state_std
            pred_z, d_state, success_logit, d_full = self.world_expert(meta, z_in, state_n, actions_n[:, k], full_n)
            # rows whose episode reaches chunk k (a plain slice when all do: the one-chunk loss, value for value)
            r = slice(None) if valid is None or bool(valid[:, k].all()) else valid[:, k]
            if isinstance(r, slice) or bool(r.any()):
                d_state_real = (next_state[:, k] - state) / self.state_std  # the real change from the state read
                terms = {
                    "loss/world_latent": F.mse_loss(pred_z[r], z_next[:, k][r]),
                    "loss/world_state": F.mse_loss(d_state[r], d_state_real[r]),
                    "loss/world_success": F.binary_cross_entropy_with_logits(success_logit[r], success[:, k][r]),
                }
                if full_n is not None:
                    terms["loss/world_full_state"] = F.mse_loss(d_full[r], (next_full_n[:, k] - full_n)[r])
                per_chunk.append(terms)
                out[f"loss/world_chunk{k + 1}"] = self.world_loss(terms)
                out[f"loss/world_latent_chunk{k + 1}"] = terms["loss/world_latent"]
                out[f"loss/world_state_chunk{k + 1}"] = terms["loss/world_state"]
            if k + 1 == K:
                break
            # feed the prediction back, as `rollout.imagined.advance` does: latent, state and full state
            state = state + d_state * self.state_std
            full_n = None if full_n is None else full_n + d_full
            if reencode:  # through a uint8 frame, like the policy's input in imagination: no gradient
                z_in = self.encode_images(self.decode_latents(pred_z.detach())).detach()
            else:
                z_in = pred_z.detach() if detach else pred_z
            if detach:
                state = state.detach()
                full_n = None if full_n is None else full_n.detach()
        if not per_chunk:
            raise ValueError("open_loop_world_losses: no row has a valid chunk (batch['chunk_mask'] all False)")
        for key in per_chunk[0]:
            out[key] = per_chunk[0][key] if len(per_chunk) == 1 else torch.stack([t[key] for t in per_chunk]).mean()
        out["loss/world_open_loop"] = self.world_loss(out)
        return out

    def world_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The World Expert's part of the SFT loss: its terms of `sft_losses` weighted as in SFT.

        Every caller that trains the World Expert (SFT, GRPO's `world_aux_coef`, a simulator refresh) uses this, so
        that the latent, state and success terms keep the weights they were trained with.
        """
        c = self.config
        loss = (
            c.world_latent_weight * losses["loss/world_latent"]
            + c.world_state_weight * losses["loss/world_state"]
            + c.world_success_weight * losses["loss/world_success"]
        )
        if "loss/world_full_state" in losses:
            loss = loss + c.world_full_state_weight * losses["loss/world_full_state"]
        return loss
