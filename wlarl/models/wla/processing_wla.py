"""Text tokenizer and image preprocessing of the WLA policy, saved next to its weights."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]  # ids 0..3; PAD must be 0 (ActionSample.cat pads subtask ids with 0)
PROCESSOR_CONFIG = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"


def preprocess_images(images: torch.Tensor, image_size: int, name: str = "images") -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]; wrong shapes or dtypes raise naming `name`."""
    s = image_size
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"{name}: expected a uint8 tensor of shape [N, {s}, {s}, 3], got {got}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3):
        raise ValueError(f"{name}: expected shape [N, {s}, {s}, 3], got {list(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def postprocess_images(x: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return ((x.detach().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class WLAProcessor:
    """Word-level tokenizer (built locally from instructions and subtasks) plus image pre/post-processing.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose vocab starts with [PAD], [UNK], [BOS], [EOS].
        image_size: expected square image side in pixels.
        max_instruction_tokens: instructions are truncated to this many tokens.
        max_subtask_tokens: subtasks are truncated to this many tokens, the [EOS] token included.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_size: int = 64,
        max_instruction_tokens: int = 32,
        max_subtask_tokens: int = 12,
    ) -> None:
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(f"WLAProcessor: tokenizer must map {tok} to id {i}; build it with WLAProcessor.build")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_instruction_tokens = max_instruction_tokens
        self.max_subtask_tokens = max_subtask_tokens
        self._cache: dict[str, list[int]] = {}

    # ---------------------------------------------------------------- text
    @classmethod
    def build(cls, corpus: Iterable[str], **kwargs) -> WLAProcessor:
        """Build the word-level vocabulary from `corpus` (instructions and subtasks); kwargs go to __init__."""
        tok = Tokenizer(WordLevel(unk_token=UNK))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(sorted(set(corpus)), WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
        return cls(tok, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3

    def _ids(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(self._cache) < 100_000:
                self._cache[text] = ids
        return ids

    def _pad(self, seqs: list[list[int]], device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(1, max(len(s) for s in seqs))
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        ids = ids.to(device)
        return ids, ids != self.pad_id

    def encode_instructions(self, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded instruction ids and mask, long/bool [N, L]. An empty instruction becomes [UNK]."""
        seqs = [self._ids(t)[: self.max_instruction_tokens] or [self.unk_id] for t in texts]
        return self._pad(seqs, device)

    def encode_subtasks(self, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded subtask ids ending in [EOS] and mask, long/bool [N, L] (L <= max_subtask_tokens)."""
        seqs = [self._ids(t)[: self.max_subtask_tokens - 1] + [self.eos_id] for t in texts]
        return self._pad(seqs, device)

    def decode_subtasks(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
        """Subtask strings from ids [N, L]; stops at [EOS], skips padding."""
        out = []
        for row, m in zip(ids.tolist(), (mask if mask is not None else ids != self.pad_id).tolist()):
            toks = []
            for t, keep in zip(row, m):
                if not keep or t == self.eos_id:
                    break
                toks.append(t)
            out.append(self.tokenizer.decode(toks, skip_special_tokens=True))
        return out

    # ---------------------------------------------------------------- images
    def preprocess_images(self, images: torch.Tensor, name: str = "images") -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]; wrong shapes or dtypes raise naming `name`."""
        return preprocess_images(images, self.image_size, name)

    @staticmethod
    def postprocess_images(x: torch.Tensor) -> torch.Tensor:
        """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
        return postprocess_images(x)

    @staticmethod
    def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3] (antialiased bilinear), for datasets of another size."""
        x = images.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(out / TOKENIZER_FILE))
        cfg = {
            "processor_class": "WLAProcessor",
            "image_size": self.image_size,
            "max_instruction_tokens": self.max_instruction_tokens,
            "max_subtask_tokens": self.max_subtask_tokens,
            "image_format": "uint8 [N,H,W,3] upright -> float [N,3,H,W] in [-1,1]",
        }
        (out / PROCESSOR_CONFIG).write_text(json.dumps(cfg, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> WLAProcessor:
        d = Path(directory)
        if not (d / TOKENIZER_FILE).is_file() or not (d / PROCESSOR_CONFIG).is_file():
            raise FileNotFoundError(f"WLAProcessor: {d} lacks {TOKENIZER_FILE} or {PROCESSOR_CONFIG}")
        cfg = json.loads((d / PROCESSOR_CONFIG).read_text())
        return cls(
            Tokenizer.from_file(str(d / TOKENIZER_FILE)),
            image_size=cfg["image_size"],
            max_instruction_tokens=cfg["max_instruction_tokens"],
            max_subtask_tokens=cfg["max_subtask_tokens"],
        )
