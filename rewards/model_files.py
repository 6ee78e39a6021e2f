"""Saving and loading the small reward-side models (state reward model, dynamics ensemble): ``config.json`` +
``model.safetensors`` in one folder, written atomically, read back with errors that name the file and the fix.

Light on purpose (torch and safetensors only): loading one model must not import the success classifier.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write `path` through a temp file in the same folder and os.replace it: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
    """NaN/inf → None, recursively through dicts, lists and tuples, so a metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_model_files(model: torch.nn.Module, output_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and then ``config.json`` (``model.config.to_dict()``) into `output_dir`, each
    atomically; returns the folder."""
    from safetensors.torch import save_file

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2)
    write_atomic(out / CONFIG_FILE, lambda p: p.write_text(text))
    return out


def load_model_files(
    path: str | os.PathLike,
    *,
    config_cls: Any,
    model_cls: Callable[[Any], torch.nn.Module],
    what: str,
    retrain: str,
    model_type: str,
    device: str | torch.device | None = None,
    mismatch_hint: Callable[[Any, dict[str, tuple], dict[str, tuple]], str] | None = None,
) -> Any:
    """Load a folder written by `save_model_files` (or its ``final/``), in eval mode, with ``model.source`` = `path`.

    Args:
        config_cls: has ``from_dict(dict)`` (unknown keys an error).
        model_cls: builds the model from its config.
        what: the model's name in messages ("state reward model").
        retrain: how to make a new one, appended to every message.
        model_type: the config's expected ``model_type`` (named when the config cannot be read).
        mismatch_hint: ``(config, expected shapes, got shapes) -> str`` added to a weights/config mismatch message.

    Raises:
        FileNotFoundError: no config.json or no model.safetensors (the message names the file).
        ValueError: a config or weights file that cannot be read (truncated, corrupt, other keys or shapes,
            non-finite values); the message names the file and what was expected.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if (p / "final" / CONFIG_FILE).is_file():
        p = p / "final"
    config_file, weights_file = p / CONFIG_FILE, p / WEIGHTS_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r}: no {CONFIG_FILE} there (nor in final/); {retrain}")
    if not weights_file.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r}: {weights_file} is missing; {retrain}")
    try:
        data = json.loads(config_file.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        config = config_cls.from_dict(data)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"{what}: cannot read {config_file} ({e}); expected the JSON object of a {config_cls.__name__} "
            f"(model_type {model_type!r}); re-save it or {retrain}"
        ) from e
    model = model_cls(config)
    try:
        tensors = load_file(str(weights_file))
    except (OSError, SafetensorError) as e:
        raise ValueError(
            f"{what}: cannot read the weights in {weights_file} ({type(e).__name__}: {str(e)[:200]}); "
            f"the file is truncated or corrupt; {retrain}"
        ) from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        diff = {
            "missing": sorted(set(expected) - set(got)),
            "unexpected": sorted(set(got) - set(expected)),
            "shape": {
                k: f"{got[k]} (expected {expected[k]})" for k in set(got) & set(expected) if got[k] != expected[k]
            },
        }
        hint = mismatch_hint(config, expected, got) if mismatch_hint is not None else ""
        raise ValueError(
            f"{what}: {weights_file} does not match {config_file}{hint}: "
            f"{ {k: v for k, v in diff.items() if v} }; {retrain}"
        )
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{what}: {weights_file} holds non-finite values in {bad}; {retrain}")
    model.load_state_dict(tensors)
    model.source = str(path)
    if device is not None:
        model = model.to(device)
    return model.eval()
