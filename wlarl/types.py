"""Typed batch containers passed between rollout, rewards and the trainer.

Shape letters (see DESIGN.md): N rows · B start states · G group samples · T chunks per imagined episode ·
H actions per chunk · A action dim · S state dim · L text tokens · C,h,w image-latent grid · HxWx3 pixels.
Images are uint8 [.., H, W, 3] outside models.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch


def _check(name: str, value: Any, ndim: int, expected: str, dtype: torch.dtype | None = None) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {expected}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(value.shape)}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (shape {expected}), got {value.dtype}")


def _batch_only(idx: Any, batch_dims: int) -> bool:
    """Whether index `idx` selects along the first `batch_dims` dims only (no pixel dims, no Ellipsis/None)."""
    items = idx if isinstance(idx, tuple) else (idx,)
    used = 0
    for it in items:
        if it is None or it is Ellipsis:
            return False
        if isinstance(it, torch.Tensor) and it.dtype == torch.bool:
            used += it.ndim
        elif isinstance(it, (int, slice, list, torch.Tensor, np.ndarray, np.integer)):
            used += 1
        else:
            return False
    return used <= batch_dims


class LazyImages:
    """uint8 images [*batch, H, W, 3] that are decoded from latents [*batch, C, h, w] when read.

    Imagination predicts latents; decoding them to pixels costs about a third of a chunk. A `LazyImages` stands for
    the decoded images and behaves like that uint8 tensor (`shape`, `dtype`, `device`, `len`, tensor methods, torch
    functions, numpy conversion), but decodes only what is read:

    * indexing the batch dims (``x[rows]``, ``x[rows, t]``) decodes just the selected frames;
    * anything else (``x.float()``, ``x[..., 0]``, ``torch.stack([x])``, ``np.asarray(x)``) decodes every frame once
      and caches the result (`materialize`).

    `select` and `LazyImages.cat` stay lazy (they are what `Observation.index` / `Observation.cat` use).

    Args:
        latents: float [*batch, C, h, w].
        decode: function latents [M, C, h, w] -> uint8 images [M, H, W, 3] (e.g. `WLAPolicy.decode_latents`).
        image_shape: (H, W, 3).
    """

    def __init__(self, latents: torch.Tensor, decode: Any, image_shape: tuple[int, ...] | torch.Size):
        if not isinstance(latents, torch.Tensor) or latents.ndim < 4:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"LazyImages: latents must be a tensor [*batch, C, h, w], got {got}")
        if len(image_shape) != 3 or int(image_shape[-1]) != 3:
            raise ValueError(f"LazyImages: image_shape must be (H, W, 3), got {tuple(image_shape)}")
        self.latents = latents
        self.decode = decode
        self.image_shape = tuple(int(d) for d in image_shape)
        self._full: torch.Tensor | None = None

    # -- what a tensor would say about itself ---------------------------------------------------------------
    @property
    def batch_shape(self) -> torch.Size:
        return self.latents.shape[:-3]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.batch_shape, *self.image_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def device(self) -> torch.device:
        return self.latents.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_decoded(self) -> bool:
        """True once every frame has been decoded (and cached)."""
        return self._full is not None

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return self.ndim

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        state = "decoded" if self._full is not None else "not decoded"
        return f"LazyImages(shape={list(self.shape)}, dtype=torch.uint8, {state})"

    # -- decoding -------------------------------------------------------------------------------------------
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        lead = latents.shape[:-3]
        flat = latents.reshape(-1, *latents.shape[-3:])
        if flat.shape[0] == 0:
            images = torch.zeros((0, *self.image_shape), dtype=torch.uint8, device=latents.device)
        else:
            with torch.no_grad():
                images = self.decode(flat)
        if tuple(images.shape) != (flat.shape[0], *self.image_shape) or images.dtype != torch.uint8:
            raise ValueError(
                f"LazyImages: decode returned {images.dtype} {tuple(images.shape)}, "
                f"expected uint8 {(flat.shape[0], *self.image_shape)}"
            )
        return images.reshape(*lead, *self.image_shape)

    def materialize(self) -> torch.Tensor:
        """Every frame, decoded once and cached: uint8 [*batch, H, W, 3]."""
        if self._full is None:
            self._full = self._decode(self.latents)
        return self._full

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if self._full is not None:
            return self._full[idx]
        if _batch_only(idx, len(self.batch_shape)):
            return self._decode(self.latents[idx])
        return self.materialize()[idx]

    def select(self, idx: Any) -> LazyImages:
        """The rows `idx` of the batch dims, still lazy."""
        if not _batch_only(idx, len(self.batch_shape)):
            raise IndexError(f"LazyImages.select: {idx!r} does not index the batch dims {list(self.batch_shape)} only")
        out = LazyImages(self.latents[idx], self.decode, self.image_shape)
        if self._full is not None:
            out._full = self._full[idx]
        return out

    @staticmethod
    def cat(items: list[LazyImages | torch.Tensor], dim: int = 0) -> LazyImages | torch.Tensor:
        """Concatenate along batch dim `dim`; stays lazy when every item is lazy with the same decoder."""
        lazy = [it for it in items if isinstance(it, LazyImages)]
        if len(lazy) == len(items) and items and all(it.decode == lazy[0].decode for it in lazy):
            if not 0 <= dim < len(lazy[0].batch_shape):
                return torch.cat([it.materialize() for it in lazy], dim=dim)
            return LazyImages(torch.cat([it.latents for it in lazy], dim=dim), lazy[0].decode, lazy[0].image_shape)
        return torch.cat([it.materialize() if isinstance(it, LazyImages) else it for it in items], dim=dim)

    def to(self, *args: Any, **kwargs: Any) -> LazyImages | torch.Tensor:
        """`to(device)` moves the latents and stays lazy; any other conversion decodes."""
        device_only = all(isinstance(a, (str, torch.device)) for a in args) and set(kwargs) <= {"device"}
        if device_only and (args or kwargs):
            device = args[0] if args else kwargs["device"]
            out = LazyImages(self.latents.to(device), self.decode, self.image_shape)
            if self._full is not None:
                out._full = self._full.to(device)
            return out
        return self.materialize().to(*args, **kwargs)

    def cpu(self) -> LazyImages:
        return self.to("cpu")

    # -- everything else decodes ----------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("latents", "decode", "image_shape"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    def __iter__(self):
        return iter(self.materialize())

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:  # what torch.as_tensor / torch.from_dlpack read
        return self.materialize().__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self.materialize().__dlpack_device__()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.materialize().cpu().numpy()
        return arr if dtype is None else arr.astype(dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.cat and len(args) >= 1 and isinstance(args[0], (list, tuple)):
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return cls.cat(list(args[0]), dim=dim)

        def plain(x: Any) -> Any:
            if isinstance(x, LazyImages):
                return x.materialize()
            if isinstance(x, (list, tuple)):
                return type(x)(plain(v) for v in x)
            return x

        return func(*plain(args), **{k: plain(v) for k, v in kwargs.items()})


def _lazy_operator(name: str):
    def op(self: LazyImages, *args: Any) -> Any:
        return getattr(self.materialize(), name)(*[a.materialize() if isinstance(a, LazyImages) else a for a in args])

    op.__name__ = name
    return op


for _name in (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__floordiv__", "__mod__", "__pow__", "__neg__", "__abs__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
    "__ge__", "__and__", "__or__", "__xor__", "__invert__", "__matmul__",
):  # fmt: skip
    setattr(LazyImages, _name, _lazy_operator(_name))
LazyImages.__hash__ = None  # type: ignore[assignment]  # like tensors compared elementwise: not hashable by value


def last_alive_index(alive: torch.Tensor) -> torch.Tensor:
    """long [N]: index of the last chunk each row ran, from alive bool [N, T] (0 for a row with none)."""
    alive = torch.as_tensor(alive).bool()
    t = torch.arange(alive.shape[1], device=alive.device).expand_as(alive)  # [N, T]
    return torch.where(alive, t, torch.zeros_like(t)).amax(dim=1)


def _take_rows(images: torch.Tensor | LazyImages, rows: torch.Tensor) -> torch.Tensor | LazyImages:
    return images.select(rows) if isinstance(images, LazyImages) else images[rows]


@dataclass
class Observation:
    """A batch of N observations.

    Attributes:
        images: uint8 [N, H, W, 3], upright camera frames (a `LazyImages` for imagined observations: decoded from
            `latents` only when read).
        states: float32 [N, S] robot state.
        instructions: N natural-language instructions.
        task_names: N simulator task names.
        latents: optional float [N, C, h, w] image latents (set by the World Expert in imagination so that the
            policy need not re-encode its own predictions).
        full_states: optional float32 [N, F] full simulator state (object and goal positions). The policy never
            reads it; a World Expert that models full states (`full_state_dim` > 0) reads it and, in imagination,
            carries its own prediction forward.
    """

    images: torch.Tensor | LazyImages
    states: torch.Tensor
    instructions: list[str]
    task_names: list[str]
    latents: torch.Tensor | None = None
    full_states: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray):
            self.images = torch.from_numpy(np.ascontiguousarray(self.images))
        if isinstance(self.states, np.ndarray):
            self.states = torch.from_numpy(np.asarray(self.states, dtype=np.float32))
        if isinstance(self.images, LazyImages):
            if self.images.ndim != 4:
                raise ValueError(f"Observation.images: expected shape [N, H, W, 3], got {tuple(self.images.shape)}")
        else:
            _check("Observation.images", self.images, 4, "[N, H, W, 3] uint8", torch.uint8)
        if self.images.shape[-1] != 3:
            raise ValueError(f"Observation.images: expected shape [N, H, W, 3], got {tuple(self.images.shape)}")
        _check("Observation.states", self.states, 2, "[N, S] float32", torch.float32)
        n = self.images.shape[0]
        if self.states.shape[0] != n:
            raise ValueError(f"Observation.states: expected {n} rows like images, got {self.states.shape[0]}")
        if isinstance(self.instructions, str) or len(self.instructions) != n:
            raise ValueError(f"Observation.instructions: expected a list of {n} strings")
        if isinstance(self.task_names, str) or len(self.task_names) != n:
            raise ValueError(f"Observation.task_names: expected a list of {n} strings")
        if self.latents is not None:
            _check("Observation.latents", self.latents, 4, "[N, C, h, w]")
            if self.latents.shape[0] != n:
                raise ValueError(f"Observation.latents: expected {n} rows, got {self.latents.shape[0]}")
        if isinstance(self.full_states, np.ndarray):
            self.full_states = torch.from_numpy(np.asarray(self.full_states, dtype=np.float32))
        if self.full_states is not None:
            _check("Observation.full_states", self.full_states, 2, "[N, F] float32", torch.float32)
            if self.full_states.shape[0] != n:
                raise ValueError(f"Observation.full_states: expected {n} rows, got {self.full_states.shape[0]}")

    @classmethod
    def from_dicts(cls, items: Any) -> Observation:
        """Stack N observation dicts into a batch [N].

        Each dict holds ``image`` (uint8 [H, W, 3]), ``state`` ([S]), ``instruction`` and ``task_name`` (optional,
        default ""): a start state of `wlarl.data.start_states`, a dataset row or a real env observation. When every
        dict also holds a non-empty ``full_state`` ([F]), the batch carries `full_states`.
        """
        items = list(items)
        if not items:
            raise ValueError("Observation.from_dicts: got no observations")
        for i, it in enumerate(items):
            missing = [k for k in ("image", "state", "instruction") if k not in it]
            if missing:
                raise KeyError(
                    f"Observation.from_dicts: item {i} lacks {missing} (expected image, state, instruction, task_name)"
                )
        return cls(
            images=torch.from_numpy(np.stack([np.asarray(it["image"], dtype=np.uint8) for it in items])),
            states=torch.from_numpy(np.stack([np.asarray(it["state"], dtype=np.float32) for it in items])),
            instructions=[str(it["instruction"]) for it in items],
            task_names=[str(it.get("task_name", "")) for it in items],
            full_states=_stack_full_states(items),
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.states.device

    def to(self, device: torch.device | str) -> Observation:
        return replace(
            self,
            images=self.images.to(device),
            states=self.states.to(device),
            latents=None if self.latents is None else self.latents.to(device),
            full_states=None if self.full_states is None else self.full_states.to(device),
        )

    def index(self, idx: torch.Tensor | list[int] | slice) -> Observation:
        """Rows `idx` of the batch (any index torch accepts on dim 0)."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            rows = torch.as_tensor(idx).tolist()
            if isinstance(rows, int):
                rows = [rows]
        t = torch.as_tensor(rows, dtype=torch.long, device=self.images.device)
        return Observation(
            images=_take_rows(self.images, t),
            states=self.states[t],
            instructions=[self.instructions[i] for i in rows],
            task_names=[self.task_names[i] for i in rows],
            latents=None if self.latents is None else self.latents[t.to(self.latents.device)],
            full_states=None if self.full_states is None else self.full_states[t.to(self.full_states.device)],
        )

    def repeat_interleave(self, g: int) -> Observation:
        """[B] -> [B*G]: each row repeated G times consecutively (GRPO groups)."""
        return self.index(torch.arange(len(self)).repeat_interleave(g))

    @staticmethod
    def cat(items: list[Observation]) -> Observation:
        has_latents = all(o.latents is not None for o in items)
        has_full = all(o.full_states is not None for o in items)
        return Observation(
            images=LazyImages.cat([o.images for o in items]),
            states=torch.cat([o.states for o in items]),
            instructions=[s for o in items for s in o.instructions],
            task_names=[s for o in items for s in o.task_names],
            latents=torch.cat([o.latents for o in items]) if has_latents else None,
            full_states=torch.cat([o.full_states for o in items]) if has_full else None,
        )


def _stack_full_states(items: list[Any]) -> torch.Tensor | None:
    """float32 [N, F] of the dicts' ``full_state`` when every one holds a non-empty one of one length, else None."""
    fulls = [it.get("full_state") for it in items]
    if any(f is None or np.asarray(f).size == 0 for f in fulls):
        return None
    arrs = [np.asarray(f, dtype=np.float32).reshape(-1) for f in fulls]
    if len({a.shape[0] for a in arrs}) != 1:
        raise ValueError(f"Observation.from_dicts: full_state lengths differ: {sorted({a.shape[0] for a in arrs})}")
    return torch.from_numpy(np.stack(arrs))


@dataclass
class ActionSample:
    """What `WLAPolicy.act` returns for N rows, and what `log_prob` needs to rescore the same sample.

    Attributes:
        actions: float [N, H, A] action chunk in the env's action space.
        log_prob: float [N] log-probability of the action chunk under the sampling policy (summed over H, A and,
            for the flow head, over the stored denoising chain).
        log_prob_terms: float [N, H, A] (or [N, K, H, A] for flow) per-element terms that sum to `log_prob`.
        subtask_ids: long [N, L] sampled subtask token ids (padded with the pad id).
        subtask_mask: bool [N, L] True on real subtask tokens (including the end-of-subtask token).
        subtask_log_probs: float [N, L] per-token log-probs of the subtask (0 on padding).
        subtask_text: N decoded subtask strings.
        extras: head-specific tensors needed to recompute log-probs exactly (e.g. the flow chain [N, K+1, H, A]).
    """

    actions: torch.Tensor
    log_prob: torch.Tensor
    log_prob_terms: torch.Tensor
    subtask_ids: torch.Tensor
    subtask_mask: torch.Tensor
    subtask_log_probs: torch.Tensor
    subtask_text: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.actions.shape[0]

    def index(self, idx: torch.Tensor | list[int]) -> ActionSample:
        t = torch.as_tensor(idx, dtype=torch.long, device=self.actions.device)
        rows = t.tolist()
        return ActionSample(
            actions=self.actions[t],
            log_prob=self.log_prob[t],
            log_prob_terms=self.log_prob_terms[t],
            subtask_ids=self.subtask_ids[t],
            subtask_mask=self.subtask_mask[t],
            subtask_log_probs=self.subtask_log_probs[t],
            subtask_text=[self.subtask_text[i] for i in rows],
            extras={k: v[t] for k, v in self.extras.items()},
        )

    def detach(self) -> ActionSample:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.detach()
            elif isinstance(v, dict):
                v = {k: x.detach() for k, x in v.items()}
            out[f.name] = v
        return ActionSample(**out)

    @staticmethod
    def cat(items: list[ActionSample]) -> ActionSample:
        """Concatenate along N. Subtask tensors are right-padded to the longest L (pad id 0, mask False)."""
        max_l = max(s.subtask_ids.shape[1] for s in items)

        def pad(x: torch.Tensor, value: float | int | bool) -> torch.Tensor:
            if x.shape[1] == max_l:
                return x
            return torch.nn.functional.pad(x, (0, max_l - x.shape[1]), value=value)

        return ActionSample(
            actions=torch.cat([s.actions for s in items]),
            log_prob=torch.cat([s.log_prob for s in items]),
            log_prob_terms=torch.cat([s.log_prob_terms for s in items]),
            subtask_ids=torch.cat([pad(s.subtask_ids, 0) for s in items]),
            subtask_mask=torch.cat([pad(s.subtask_mask, False) for s in items]),
            subtask_log_probs=torch.cat([pad(s.subtask_log_probs, 0.0) for s in items]),
            subtask_text=[t for s in items for t in s.subtask_text],
            extras={k: torch.cat([s.extras[k] for s in items]) for k in items[0].extras},
        )


@dataclass
class WorldPrediction:
    """What the World Expert predicts for N rows after an action chunk.

    Attributes:
        latents: float [N, C, h, w] image latents at t+H (the subgoal).
        states: float32 [N, S] predicted robot state at t+H.
        success_logits: float [N] predicted task-success logit at t+H.
        images: uint8 [N, H, W, 3] decoded subgoal images, or None when decoding was not requested.
        full_states: float32 [N, F] predicted full simulator state at t+H, or None when the World Expert does not
            model full states (`full_state_dim` 0) or the observation carried none.
    """

    latents: torch.Tensor
    states: torch.Tensor
    success_logits: torch.Tensor
    images: torch.Tensor | None = None
    full_states: torch.Tensor | None = None


@dataclass
class Trajectories:
    """N imagined (or real) episodes of up to T chunks, rows grouped as B starts × G samples (row = b*G + g).

    Attributes:
        observations: per chunk t < T, the Observation the policy acted on (N rows each).
        samples: per chunk t < T, the ActionSample drawn (on-policy log-probs included).
        subgoal_images: uint8 [N, T, H, W, 3] predicted images after each chunk; imagination hands a `LazyImages`
            that decodes only the frames read (a reward that reads the final frame decodes N frames, not N·T).
        subgoal_latents: float [N, T, C, h, w] predicted latents after each chunk.
        states: float [N, T, S] predicted states after each chunk.
        success_logits: float [N, T] predicted success logit after each chunk.
        alive: bool [N, T] True while the episode had not terminated before chunk t (the chunk counts).
        success: bool [N] whether the episode ended in (predicted) success.
        instructions, task_names: N strings each.
        group_size: G.
        classifier_probs: optional float [N, T] success-classifier probability of each predicted frame (set when
            the engine ran the classifier to decide success).
        action_bounds: optional (low, high): actions are executed clipped to these bounds, as the real simulator
            does; the samples keep the unclipped draw whose log-prob the policy gradient uses.
        full_states: optional float [N, T, F] full simulator state after each chunk (object and goal positions):
            the simulator's with the real engine; the World Expert's prediction in imagination when it models full
            states and the starts carried one.
        env_steps: optional long [N] real env steps each row executed (set by the real engine; None in imagination).
        engine: "imagined" or "real": where the rows were rolled out.
    """

    observations: list[Observation]
    samples: list[ActionSample]
    subgoal_images: torch.Tensor | LazyImages
    subgoal_latents: torch.Tensor
    states: torch.Tensor
    success_logits: torch.Tensor
    alive: torch.Tensor
    success: torch.Tensor
    instructions: list[str]
    task_names: list[str]
    group_size: int
    classifier_probs: torch.Tensor | None = None
    action_bounds: tuple[float, float] | None = None
    full_states: torch.Tensor | None = None
    env_steps: torch.Tensor | None = None
    engine: str = "imagined"

    @property
    def num_rows(self) -> int:
        return self.alive.shape[0]

    @property
    def horizon(self) -> int:
        return self.alive.shape[1]

    @property
    def sampled_actions(self) -> torch.Tensor:
        """float [N, T, H, A] the policy's draws (unclipped; their log-probs are the samples' `log_prob`)."""
        return torch.stack([s.actions for s in self.samples], dim=1)

    @property
    def actions(self) -> torch.Tensor:
        """float [N, T, H, A] the executed actions: the draws clipped to `action_bounds` (when set)."""
        return self._bound(self.sampled_actions)

    @property
    def action_means(self) -> torch.Tensor | None:
        """float [N, T, H, A] the policy's mean chunk at each step (clipped like `actions`), or None (no mean)."""
        if not self.samples or any("mean" not in s.extras for s in self.samples):
            return None
        return self._bound(torch.stack([s.extras["mean"] for s in self.samples], dim=1))

    def _bound(self, x: torch.Tensor) -> torch.Tensor:
        if self.action_bounds is None:
            return x
        low, high = self.action_bounds
        return x.clamp(float(low), float(high))

    @property
    def subtasks(self) -> list[list[str]]:
        """N lists of T subtask strings."""
        return [[s.subtask_text[i] for s in self.samples] for i in range(self.num_rows)]

    @property
    def last_alive_index(self) -> torch.Tensor:
        """long [N] the last chunk that counts of each row (see `last_alive_index`)."""
        return last_alive_index(self.alive)

    @property
    def lengths(self) -> torch.Tensor:
        """long [N] number of chunks each episode ran."""
        return self.alive.sum(dim=1)

    def index(self, rows: torch.Tensor | list[int]) -> Trajectories:
        """The episodes `rows` (lazy subgoal images stay lazy)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        r = rows.tolist()
        return Trajectories(
            observations=[o.index(rows) for o in self.observations],
            samples=[s.index(rows) for s in self.samples],
            subgoal_images=_take_rows(self.subgoal_images, rows),
            subgoal_latents=self.subgoal_latents[rows],
            states=self.states[rows],
            success_logits=self.success_logits[rows],
            alive=self.alive[rows],
            success=self.success[rows],
            instructions=[self.instructions[i] for i in r],
            task_names=[self.task_names[i] for i in r],
            group_size=self.group_size,
            classifier_probs=None if self.classifier_probs is None else self.classifier_probs[rows],
            action_bounds=self.action_bounds,
            full_states=None if self.full_states is None else self.full_states[rows],
            env_steps=None if self.env_steps is None else self.env_steps[rows],
            engine=self.engine,
        )

    @staticmethod
    def cat(items: list[Trajectories]) -> Trajectories:
        """Episodes of `items` one after another (all with the same horizon T)."""
        if len(items) == 1:
            return items[0]
        horizons = {it.horizon for it in items}
        if len(horizons) != 1:
            raise ValueError(f"Trajectories.cat: every item needs the same horizon T, got {sorted(horizons)}")
        T = items[0].horizon
        return Trajectories(
            observations=[Observation.cat([it.observations[t] for it in items]) for t in range(T)],
            samples=[ActionSample.cat([it.samples[t] for it in items]) for t in range(T)],
            subgoal_images=LazyImages.cat([it.subgoal_images for it in items]),
            subgoal_latents=torch.cat([it.subgoal_latents for it in items]),
            states=torch.cat([it.states for it in items]),
            success_logits=torch.cat([it.success_logits for it in items]),
            alive=torch.cat([it.alive for it in items]),
            success=torch.cat([it.success for it in items]),
            instructions=[s for it in items for s in it.instructions],
            task_names=[s for it in items for s in it.task_names],
            group_size=items[0].group_size,
            classifier_probs=None
            if any(it.classifier_probs is None for it in items)
            else torch.cat([it.classifier_probs for it in items]),
            action_bounds=items[0].action_bounds,
            full_states=None
            if any(it.full_states is None for it in items)
            else torch.cat([it.full_states for it in items]),
            env_steps=None if any(it.env_steps is None for it in items) else torch.cat([it.env_steps for it in items]),
            engine=items[0].engine,
        )


@dataclass
class RewardOutput:
    """Rewards of every reward function for N rows.

    Attributes:
        per_function: float [N, F] rewards, NaN where a function returned None (row skipped for it).
        names: F reward-function names.
        weights: float [F] weights used to combine them.
    """

    per_function: torch.Tensor
    names: list[str]
    weights: torch.Tensor

    def weighted_sum(self) -> torch.Tensor:
        """float [N]: Σ_f w_f r_f, NaN treated as 0 (skipped rows contribute nothing)."""
        return (torch.nan_to_num(self.per_function, nan=0.0) * self.weights[None, :]).sum(dim=1)
