"""Run folders: the one module that reads and writes them. A model is a folder that describes itself.

Layout of a run (and of a shipped model)::

    config.json        the resolved RunConfig plus "format" (the layout version, FORMAT)
    model.safetensors  weights of the best-by-validation epoch
    thresholds.json    post-processing thresholds tuned on validation data
    metrics.json       validation scores of the saved weights, the validation image names, object diameter
    last.pt            training state for --resume (model, optimizer, scheduler, epoch, RNG)
    history.jsonl      one JSON line per epoch
    curve.png          training curves

Loading needs no flags: the config rebuilds the network, safetensors holds the
weights (no pickle), and ``last.pt`` is read with ``weights_only=True``. Older
folders are migrated on reading (format 1 had no ``task``); newer ones are
refused with a message saying so.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from .config import PostConfig, RunConfig, from_dict, to_dict
from .tasks import build_config
from .io import InputError, atomic_path

FORMAT = 2  # 2: "task" key, no train.val_metric, train.channels_last
WEIGHTS_DIR = Path(__file__).parent / "weights"

CONFIG, WEIGHTS, THRESHOLDS, METRICS = "config.json", "model.safetensors", "thresholds.json", "metrics.json"
STATE, HISTORY, CURVE = "last.pt", "history.jsonl", "curve.png"
SHIPPED_FILES = (CONFIG, WEIGHTS, THRESHOLDS, METRICS, HISTORY, CURVE)


# ---- finding models ---------------------------------------------------------------
def shipped_models() -> dict[str, Path]:
    """Name -> folder of every model shipped inside the package."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(WEIGHTS_DIR.iterdir()) if (p / CONFIG).is_file()}


def resolve_model(name_or_path: str | Path) -> Path:
    """A model folder from a shipped model's name or a folder path."""
    path = Path(name_or_path)
    if (path / CONFIG).is_file():
        return path
    models = shipped_models()
    if str(name_or_path) in models:
        return models[str(name_or_path)]
    raise InputError(
        f"{name_or_path}: not a model folder (no {CONFIG}) nor a shipped model (shipped: {', '.join(models) or 'none'})"
    )


# ---- JSON ---------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from None


# ---- config ---------------------------------------------------------------------------
def config_dict(cfg: RunConfig) -> dict:
    """What config.json holds: the resolved config and the layout version."""
    return {"format": FORMAT, **to_dict(cfg)}


def save_config(run_dir: Path, cfg: RunConfig) -> None:
    write_json(Path(run_dir) / CONFIG, config_dict(cfg))


def migrate(data: dict) -> dict:
    """A config.json dict of any readable format, brought to :data:`FORMAT`."""
    from .tasks import legacy_task

    version = data.get("format", 1)
    if not isinstance(version, int) or version > FORMAT:
        raise InputError(f"model format {version} is newer than this biounet reads (up to {FORMAT}); "
                         f"upgrade biounet to use it")
    data = {k: v for k, v in data.items() if k != "format"}
    if version == 1:  # no task: it was implied by data.target (or the explicit validation metric)
        train = dict(data.get("train", {}))
        metric = train.pop("val_metric", "auto")
        train.setdefault("channels_last", False)  # what those runs trained with
        target = data.get("data", {}).get("target", "binary")
        by_metric = {"v_rand": "membrane", "dsb": "nuclei", "dice": "binary"}
        data = {**data, "task": by_metric.get(metric, legacy_task(target)), "train": train}
    return data


def load_config(run_dir: Path) -> RunConfig:
    """The checked RunConfig of a run or model folder (migrated from older formats)."""
    path = Path(run_dir) / CONFIG
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    try:
        return build_config(migrate(data))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


# ---- weights --------------------------------------------------------------------------
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


def load_weights(path: Path, module: torch.nn.Module, prefix: str = "") -> None:
    """Load a safetensors file (or a folder's ``model.safetensors``) into ``module``; with ``prefix``
    (``"members.0."``), only the tensors under it, the prefix stripped: one network of an ensemble."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read weights ({exc})") from None
    if prefix:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    ref = module.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{path}: weights do not match {CONFIG} ({str(exc).splitlines()[0]})") from None


def init_source(source: str | Path, cfg: RunConfig) -> tuple[Path, RunConfig]:
    """(folder, config) of the model ``train.init_weights`` names, checked against the run's ``cfg``.

    Fine-tuning needs the same network shape (an ensemble's members count as one network);
    a difference is named key by key, before any data is read, rather than as a state-dict error.
    """
    from dataclasses import fields

    folder = resolve_model(source)
    init = load_config(folder)
    diff = [f"model.{f.name} = {getattr(init.model, f.name)!r} there, {getattr(cfg.model, f.name)!r} here"
            for f in fields(init.model) if f.name != "members" and getattr(init.model, f.name) != getattr(cfg.model, f.name)]
    if diff:
        raise InputError(f"train.init_weights = {source}: its network differs from this run's ({'; '.join(diff)}); "
                         "set those keys as there to fine-tune it")
    return folder, init


def load_init_weights(source: str | Path, cfg: RunConfig, module: torch.nn.Module) -> str:
    """Load ``train.init_weights`` into the run's one network; returns what was loaded, for the log.

    A shipped model or ensemble holds several networks (``members.k.``): fine-tuning starts
    from the first, the one trained with the recipe's seed.
    """
    folder, init = init_source(source, cfg)
    if init.model.members == 1:
        load_weights(folder, module)
        return str(source)
    load_weights(folder, module, prefix="members.0.")
    return f"{source} (the first of its {init.model.members} networks)"


def load_module(run_dir: Path) -> tuple[RunConfig, torch.nn.Module]:
    """(config, network with its weights, in eval mode) of a run or model folder."""
    from .models.unet import build_model

    cfg = load_config(run_dir)
    module = build_model(cfg.model)
    load_weights(Path(run_dir) / WEIGHTS, module)
    return cfg, module.eval()


# ---- thresholds, metrics --------------------------------------------------------------
def save_post(run_dir: Path, post: PostConfig) -> None:
    write_json(Path(run_dir) / THRESHOLDS, to_dict(post))


def load_post(run_dir: Path, default: PostConfig) -> PostConfig:
    path = Path(run_dir) / THRESHOLDS
    if not path.is_file():
        return default
    try:
        return from_dict(PostConfig, read_json(path), "post.")
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def read_metrics(run_dir: Path) -> dict:
    """metrics.json of a run ({} before the first validation)."""
    path = Path(run_dir) / METRICS
    return read_json(path) if path.is_file() else {}


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json(Path(run_dir) / METRICS, metrics)


def validation_names(run_dir: Path) -> list[str]:
    """Names of the images a finished run validated on (and so never trained on)."""
    names = read_metrics(run_dir).get("val_items")
    if not names:
        raise InputError(f"{Path(run_dir) / METRICS}: records no validation images (run not finished?)")
    return list(names)


# ---- training state, history ----------------------------------------------------------
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
    with open(Path(run_dir) / HISTORY, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def clear_history(run_dir: Path) -> None:
    (Path(run_dir) / HISTORY).unlink(missing_ok=True)


def read_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_minutes(run_dir: Path) -> tuple[int, float]:
    """(epochs, minutes of training + validation) from a run's history.jsonl; (0, 0.0) without one."""
    hist = read_history(run_dir)
    return len(hist), sum(h["seconds"] + h.get("val_time", 0) for h in hist) / 60


def unseen_images(run_dir: Path) -> tuple[str, list[str]]:
    """("holdout", names) if the run held images out (nothing was picked on them), else ("val", names)."""
    held = read_metrics(run_dir).get("holdout_items")
    return ("holdout", list(held)) if held else ("val", validation_names(run_dir))


# ---- shipping -------------------------------------------------------------------------
def ship(run_dir: Path, dest: Path) -> Path:
    """Copy a finished run into ``dest`` as a model folder: fp16 weights, config, thresholds, metrics."""
    run_dir, dest = Path(run_dir), Path(dest)
    cfg, module = load_module(run_dir)
    dest.mkdir(parents=True, exist_ok=True)
    save_weights(dest / WEIGHTS, module, half=True)
    save_config(dest, cfg)  # in the current format, whatever the run was written with
    for name in (THRESHOLDS, METRICS, HISTORY, CURVE):
        if (run_dir / name).is_file():
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(run_dir / name, tmp)
    return dest
