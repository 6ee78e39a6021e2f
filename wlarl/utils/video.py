"""Writing rollout videos: mp4 when an ffmpeg back-end is installed, animated GIF otherwise.

Frames are uint8 [T, H, W, 3] everywhere. `side_by_side` builds the real | imagined strips used by
verification.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np


def mp4_available() -> bool:
    """True when imageio can encode mp4: its imageio-ffmpeg or PyAV plugin is installed (an ffmpeg binary alone on
    PATH is not enough for imageio)."""
    return any(importlib.util.find_spec(m) is not None for m in ("imageio_ffmpeg", "av"))


def _as_frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames.cpu() if hasattr(frames, "cpu") else frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"video frames: expected uint8 [T, H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise TypeError(f"video frames: expected dtype uint8 [T, H, W, 3], got {arr.dtype}")
    if arr.shape[0] == 0:
        raise ValueError("video frames: expected at least one frame, got T = 0")
    return np.ascontiguousarray(arr)


def write_video(frames: Any, path: str | Path, fps: int = 10, fmt: str = "auto") -> Path:
    """Write frames to `path`; the suffix is replaced by the format actually written.

    Args:
        frames: uint8 [T, H, W, 3] (numpy array or tensor).
        path: destination; parent folders are created.
        fps: frames per second.
        fmt: "mp4", "gif" or "auto" (mp4 when an encoder is available, else gif).

    Returns:
        The path written (with suffix .mp4 or .gif).
    """
    import imageio.v3 as iio

    arr = _as_frames(frames)
    if fmt == "auto":
        fmt = "mp4" if mp4_available() else "gif"
    if fmt not in ("mp4", "gif"):
        raise ValueError(f"write_video: fmt must be 'mp4', 'gif' or 'auto', got {fmt!r}")
    out = Path(path).with_suffix(f".{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        # Most H.264 encoders need even sizes: pad by one pixel row/column when odd.
        pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        try:
            iio.imwrite(out, arr, fps=fps)
            return out
        except (OSError, ImportError, RuntimeError):  # a broken encoder install: fall back to GIF
            out.unlink(missing_ok=True)
            out = out.with_suffix(".gif")
    iio.imwrite(out, arr, extension=".gif", duration=int(1000 / max(fps, 1)), loop=0)
    return out


def side_by_side(*videos: Any, gap: int = 2, gap_value: int = 255) -> np.ndarray:
    """Concatenate videos horizontally (e.g. real | imagined), padding shorter ones by repeating their last frame.

    Args:
        *videos: each uint8 [T_i, H, W_i, 3] with the same H.
        gap: width in pixels of the separator column between videos.
        gap_value: grey level of the separator.

    Returns:
        uint8 [max T_i, H, Σ W_i + gap·(n-1), 3].
    """
    if not videos:
        raise ValueError("side_by_side: expected at least one video")
    arrs = [_as_frames(v) for v in videos]
    heights = {a.shape[1] for a in arrs}
    if len(heights) != 1:
        raise ValueError(f"side_by_side: expected videos of equal height, got heights {sorted(heights)}")
    t_max = max(a.shape[0] for a in arrs)
    padded = [
        np.concatenate([a, np.repeat(a[-1:], t_max - a.shape[0], axis=0)]) if a.shape[0] < t_max else a for a in arrs
    ]
    parts: list[np.ndarray] = []
    for i, a in enumerate(padded):
        if i and gap:
            parts.append(np.full((t_max, a.shape[1], gap, 3), gap_value, dtype=np.uint8))
        parts.append(a)
    return np.concatenate(parts, axis=2)  # [T, H, ΣW + gaps, 3]


def frame_strip(frames: Any, max_frames: int = 16) -> np.ndarray:
    """A single image of up to `max_frames` evenly spaced frames side by side (for loggers without video).

    Args:
        frames: uint8 [T, H, W, 3].
        max_frames: most frames kept.

    Returns:
        uint8 [H, K·W, 3] with K = min(T, max_frames).
    """
    arr = _as_frames(frames)
    idx = np.unique(np.linspace(0, arr.shape[0] - 1, num=min(arr.shape[0], max_frames)).round().astype(int))
    return np.concatenate(list(arr[idx]), axis=1)


def branch_strip(start: Any, real: Any, predicted: Any, gap: int = 2, gap_value: int = 255) -> np.ndarray:
    """One image of a branch: the real frames after each chunk (top row) above the predicted ones (bottom row).

    Args:
        start: uint8 [H, W, 3], the frame both rows start from; it heads both rows.
        real: uint8 [h, H, W, 3] real frames after each chunk.
        predicted: uint8 [h', H, W, 3] predicted frames after each chunk (a shorter row is padded with grey).
        gap, gap_value: separator width in pixels and grey level.

    Returns:
        uint8 [2·H + gap, (1 + max(h, h'))·W + gap·max(h, h'), 3].
    """
    start = _as_frames(np.asarray(start)[None])[0]
    real, predicted = _as_frames(real), _as_frames(predicted)
    H, W = start.shape[:2]
    if real.shape[1:3] != (H, W) or predicted.shape[1:3] != (H, W):
        raise ValueError(
            f"branch_strip: frames must share the start frame's size {(H, W)}, got real {real.shape[1:3]} and "
            f"predicted {predicted.shape[1:3]}"
        )
    n = max(len(real), len(predicted))

    def row(frames: np.ndarray) -> np.ndarray:
        tiles = [start, *frames, *[np.full_like(start, 128)] * (n - len(frames))]
        sep = np.full((H, gap, 3), gap_value, np.uint8)
        return np.concatenate([x for t in tiles for x in (t, sep)][:-1], axis=1)

    return np.concatenate([row(real), np.full((gap, row(real).shape[1], 3), gap_value, np.uint8), row(predicted)])


def write_png_atomic(path: str | Path, image: Any) -> Path:
    """Write a uint8 [H, W, 3] image as PNG through a temporary file, so that no partial file is left behind."""
    import imageio.v3 as iio

    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"write_png_atomic: expected uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    iio.imwrite(tmp, arr, extension=".png")
    tmp.replace(out)
    return out
