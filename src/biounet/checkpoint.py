"""Run folders: a model is a folder that describes itself.

Layout of a run (and of a shipped model)::

    config.json        the resolved RunConfig (architecture, data, training, post-processing)
    model.safetensors  weights of the best-by-validation epoch
    thresholds.json    post-processing thresholds tuned on validation data
    metrics.json       validation scores of the saved weights
    last.pt            training state for --resume (model, optimizer, scheduler, epoch, RNG)
    history.jsonl      one JSON line per epoch
    curve.png          training curves

Loading needs no flags: the config rebuilds the network, safetensors holds the
weights (no pickle), and ``last.pt`` is read with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from .config import PostConfig, RunConfig, from_dict, to_dict
from .io import InputError, atomic_path


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    write_json(Path(run_dir) / "config.json", to_dict(cfg))


def load_config_json(run_dir: Path) -> RunConfig:
    return from_dict(RunConfig, read_json(Path(run_dir) / "config.json"))


def save_weights(path: Path, module: torch.nn.Module, half: bool = False) -> None:
    """Weights as safetensors; ``half`` stores parameters as fp16 (shipped models).

    Buffers (batch-norm running means and variances) stay fp32: they are a
    tiny part of the file, and a running variance can exceed fp16's largest
    value (65504), which would turn into ``inf`` and silence that channel.
    """
    from safetensors.torch import save_file

    params = {k for k, _ in module.named_parameters()}
    state = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point() and k in params:
            v = v.half()
        state[k] = v
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(path: Path, module: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read weights ({exc})") from None
    ref = module.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not match config.json ({str(exc).splitlines()[0]})") from None


def save_post(run_dir: Path, post: PostConfig) -> None:
    write_json(Path(run_dir) / "thresholds.json", dataclasses.asdict(post))


def load_post(run_dir: Path, default: PostConfig) -> PostConfig:
    path = Path(run_dir) / "thresholds.json"
    return from_dict(PostConfig, read_json(path)) if path.is_file() else default


def save_state(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path) -> dict:
    if not Path(path).is_file():
        raise InputError(f"{path}: no training state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot load training state ({exc})") from None


def append_history(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / "history.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
