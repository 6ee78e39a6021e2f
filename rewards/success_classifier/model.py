"""Success classifier model: a small conv net on 64 px frames conditioned on the task, one logit per image.

The task is an embedding over a task vocabulary saved with the model (FiLM on the pooled features). Platt scaling
(``platt_scale``, ``platt_bias``) and the decision ``threshold`` are fitted on a validation split
(`rewards.success_classifier.training.calibrate_classifier`) and saved in the config, so ``save_pretrained`` /
`load_success_classifier` (safetensors) round-trip everything. With ``progress_head`` a second output beside the
success logit regresses the frame's progress, clip(shaped reward / 10, 0, 1): dense credit that tells a failure that
came close from one that did not (`predict_progress`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class SuccessClassifierConfig(PretrainedConfig):
    """Config of `SuccessClassifier`.

    Args:
        task_names: the task vocabulary (order defines the embedding rows).
        image_size: input side in pixels (frames of another size are resized bilinearly).
        channels: output channels of the stride-2 conv blocks (len 4 → 64 px becomes a 4×4 grid).
        hidden_size: width of the MLP head.
        task_embed_dim: size of the task embedding.
        dropout: dropout before the output layer.
        platt_scale, platt_bias: calibration, p = sigmoid(platt_scale · logit + platt_bias).
        threshold: decision threshold on the calibrated probability.
        progress_head: add a progress output (sigmoid, trained on clip(shaped reward / 10, 0, 1)) beside the logit.
    """

    model_type = "wlarl_success_classifier"

    def __init__(
        self,
        task_names: Sequence[str] = (),
        image_size: int = 64,
        channels: Sequence[int] = (32, 64, 128, 128),
        hidden_size: int = 128,
        task_embed_dim: int = 32,
        dropout: float = 0.1,
        platt_scale: float = 1.0,
        platt_bias: float = 0.0,
        threshold: float = 0.5,
        progress_head: bool = False,
        **kwargs: Any,
    ) -> None:
        self.task_names = list(task_names)
        self.image_size = int(image_size)
        self.channels = list(channels)
        self.hidden_size = int(hidden_size)
        self.task_embed_dim = int(task_embed_dim)
        self.dropout = float(dropout)
        self.platt_scale = float(platt_scale)
        self.platt_bias = float(platt_bias)
        self.threshold = float(threshold)
        self.progress_head = bool(progress_head)
        super().__init__(**kwargs)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"SuccessClassifierConfig.task_names must be unique, got {self.task_names}")
        if self.image_size % (2 ** len(self.channels)) != 0:
            raise ValueError(
                f"SuccessClassifierConfig: image_size {self.image_size} must be divisible by 2**len(channels) "
                f"= {2 ** len(self.channels)}"
            )


def images_to_float(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or float [N, 3, H, W] in [0, 1]) → float [N, 3, image_size, image_size] in [0, 1]."""
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"success classifier: expected uint8 images [N, H, W, 3], got {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float() / 255.0  # [N, 3, H, W]
    else:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"success classifier: expected float images [N, 3, H, W], got {tuple(images.shape)}")
        x = images.float()
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x


class SuccessClassifier(PreTrainedModel):
    """Task-conditioned success classifier: frame + task → logit.

    Example:
        >>> model = SuccessClassifier(SuccessClassifierConfig(task_names=["reach-v3"]))
        >>> probs = model.predict_proba(images_uint8_NHW3, ["reach-v3"] * len(images_uint8_NHW3))  # doctest: +SKIP
    """

    config_class = SuccessClassifierConfig
    base_model_prefix = "success_classifier"
    main_input_name = "images"

    def __init__(self, config: SuccessClassifierConfig) -> None:
        super().__init__(config)
        if not config.task_names:
            raise ValueError("SuccessClassifierConfig.task_names is empty: give the task vocabulary")
        blocks, c_in = [], 3
        for c in config.channels:
            blocks += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(min(8, c), c), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*blocks)
        grid = config.image_size // (2 ** len(config.channels))
        self.proj = nn.Linear(c_in * grid * grid, config.hidden_size)
        self.task_embed = nn.Embedding(len(config.task_names), config.task_embed_dim)
        self.film = nn.Linear(config.task_embed_dim, 2 * config.hidden_size)
        self.head = nn.Sequential(
            nn.SiLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden_size, config.hidden_size), nn.SiLU()
        )
        self.out = nn.Linear(config.hidden_size, 1)
        self.progress_out = nn.Linear(config.hidden_size, 1) if config.progress_head else None
        self.task_bias = nn.Embedding(len(config.task_names), 1)
        self._index = {name: i for i, name in enumerate(config.task_names)}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding) and module is self.task_bias:
            nn.init.zeros_(module.weight)
        elif isinstance(module, nn.Linear) and module is getattr(self, "film", None):
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def task_ids(self, task_names: Sequence[str]) -> torch.Tensor:
        """long [N] task indices; an unknown task raises an error listing the vocabulary."""
        try:
            ids = [self._index[t] for t in task_names]
        except KeyError as e:
            raise KeyError(
                f"success classifier: unknown task {e.args[0]!r}; it was trained on {self.config.task_names}. "
                f"Retrain with recipes/train_reward.py on episodes of this task."
            ) from None
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def forward(
        self, images: torch.Tensor, task_ids: torch.Tensor, return_progress: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Raw (uncalibrated) logits, and with `return_progress` the progress logits too.

        Args:
            images: uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1].
            task_ids: long [N].
            return_progress: also return the progress head's logits (sigmoid → progress in [0, 1]).

        Returns:
            float [N] logits, or (logits [N], progress logits [N]).
        """
        x = images_to_float(images.to(self.device), self.config.image_size)  # [N, 3, s, s]
        feats = self.encoder(x * 2.0 - 1.0).flatten(1)  # [N, c*g*g]
        h = self.proj(feats)  # [N, D]
        gamma, beta = self.film(self.task_embed(task_ids)).chunk(2, dim=-1)  # [N, D] each
        h = self.head(h * (1.0 + gamma) + beta)
        logits = self.out(h)[:, 0] + self.task_bias(task_ids)[:, 0]  # [N]
        if not return_progress:
            return logits
        self.require_progress_head("forward(return_progress=True)")
        return logits, self.progress_out(h)[:, 0]  # [N], [N]

    def require_progress_head(self, what: str) -> None:
        """Raise a clear error when this model was trained without a progress head."""
        if self.progress_out is None:
            raise ValueError(
                f"{what}: this success classifier has no progress head; train one with "
                f"`python recipes/train_reward.py ... --progress_head true`"
            )

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Platt-scaled logits: platt_scale · logit + platt_bias."""
        return self.config.platt_scale * logits + self.config.platt_bias

    @torch.no_grad()
    def forward_batched(
        self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256, return_progress: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Raw logits float [N] on CPU (and progress logits with `return_progress`), in eval mode and batches of
        `batch_size`; the training mode is restored after.

        Args:
            images: uint8 [N, H, W, 3].
            task_names: N task names from the vocabulary.
        """
        if len(task_names) != images.shape[0]:
            raise ValueError(f"success classifier: {images.shape[0]} images but {len(task_names)} task names")
        if return_progress:
            self.require_progress_head("predict_progress")
        was_training = self.training
        self.eval()
        ids = self.task_ids(task_names)
        outs = [
            self(images[i : i + batch_size], ids[i : i + batch_size], return_progress)
            for i in range(0, len(ids), batch_size)
        ]
        self.train(was_training)
        if not return_progress:
            return torch.cat([o.cpu() for o in outs]) if outs else torch.zeros(0)
        if not outs:
            return torch.zeros(0), torch.zeros(0)
        return torch.cat([o[0].cpu() for o in outs]), torch.cat([o[1].cpu() for o in outs])

    def predict_logits(self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Calibrated logits, float [N] on CPU, in eval mode and batches of `batch_size`.

        Args:
            images: uint8 [N, H, W, 3].
            task_names: N task names from the vocabulary.
        """
        return self.calibrate(self.forward_batched(images, task_names, batch_size))

    def predict_proba(self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Calibrated success probabilities, float [N]."""
        return torch.sigmoid(self.predict_logits(images, task_names, batch_size))

    def predict_proba_and_progress(
        self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated success probabilities and progress in [0, 1], float [N] each on CPU, from one forward pass."""
        logits, progress = self.forward_batched(images, task_names, batch_size, return_progress=True)
        return torch.sigmoid(self.calibrate(logits)), torch.sigmoid(progress)

    def predict_progress(self, images: torch.Tensor, task_names: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Progress in [0, 1], float [N]: how far the frame is along its task (needs ``progress_head``)."""
        return self.predict_proba_and_progress(images, task_names, batch_size)[1]


def load_success_classifier(path: str | Path, device: str | torch.device | None = None) -> SuccessClassifier:
    """Load a classifier saved with `save_pretrained` (a train_reward output_dir works: its `final/` is used, as for
    the policy).

    Raises:
        FileNotFoundError: no config.json or no model.safetensors (the message names the path).
        ValueError: a config or weights file that cannot be read (truncated, corrupt, other shapes or keys); the
            message names the file.
    """
    from safetensors import SafetensorError

    p = Path(path)
    if (p / "final" / "config.json").is_file():
        p = p / "final"
    config_file, weights_file = p / "config.json", p / "model.safetensors"
    retrain = "train one with `python recipes/train_reward.py --dataset_path ... --output_dir ...`"
    if not config_file.is_file():
        raise FileNotFoundError(f"reward model {str(path)!r}: no config.json there (nor in final/); {retrain}")
    if not weights_file.is_file():
        raise FileNotFoundError(f"reward model {str(path)!r}: {weights_file} is missing; {retrain}")
    try:
        config = SuccessClassifierConfig.from_pretrained(str(p))
        if config.model_type != SuccessClassifierConfig.model_type:
            raise ValueError(f"model_type is {config.model_type!r}, expected {SuccessClassifierConfig.model_type!r}")
        if not config.task_names:
            raise ValueError("task_names is empty")
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"reward model: cannot read {config_file} ({e}); re-save it or {retrain}") from e
    try:
        model, info = SuccessClassifier.from_pretrained(str(p), config=config, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise ValueError(
            f"reward model: cannot load the weights in {weights_file} ({type(e).__name__}: {str(e)[:200]}); the file "
            f"is truncated, corrupt or from another config.json; {retrain}"
        ) from e
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"reward model: {weights_file} does not match {config_file}: {bad}; {retrain}")
    if device is not None:
        model = model.to(device)
    return model.eval()
