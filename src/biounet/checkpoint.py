"""Run folders: the one module that reads and writes them. A model is a folder that describes itself.

Layout of a run (and of a shipped model)::

    config.json        the resolved RunConfig plus "format" (the layout version, FORMAT)
    model.safetensors  weights of the best-by-validation epoch
    thresholds.json    post-processing thresholds tuned on validation data
    metrics.json       validation scores of the saved weights, the validation image names, object diameter
                       (one typed record, RunMetrics, with its own "format")
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import PostConfig, RunConfig, from_dict, to_dict
from .tasks import build_config
from .io import InputError, atomic_path

FORMAT = 2  # 2: "task" key, no train.val_metric, train.channels_last
METRICS_FORMAT = 2  # metrics.json: 2 says "format" (read through RunMetrics); 1 did not
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
    if path.is_file():  # a file of a model, or an export, given for its folder
        folder = path.parent if (path.parent / CONFIG).is_file() else None
        if path.suffix.lower() == ".onnx":
            raise InputError(
                f"{path}: an ONNX export is for other runtimes (ONNX Runtime, OpenCV, ...); --model takes a model "
                f"folder{f' ({folder})' if folder else ''}, or a shipped model's name (add --backend onnxruntime "
                "to run that folder on ONNX Runtime)")
        if folder is not None:
            raise InputError(f"{path}: is a file of the model folder {folder}; pass the folder: --model {folder}")
        raise InputError(f"{path}: is a file; --model takes a model folder (holding {CONFIG} and {WEIGHTS}) "
                         f"or a shipped model's name (shipped: {', '.join(models) or 'none'})")
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
        data = {**data, "task": legacy_task(target, metric), "train": train}
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


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json as one typed record: what a run or model knows about its saved weights.

    On disk the layout is flat, as it always was (``"epoch"``, the validation scores of
    the best epoch by name, ``"tuned_<score>"``, ``"holdout_<score>"``, ...) plus
    ``"format"`` (:data:`METRICS_FORMAT`); a file without ``"format"`` (format 1, the
    shipped models') reads the same way. Keys this version does not know are kept in
    ``extra`` and written back unchanged.
    """

    epoch: int | None = None  # the best epoch, as training saved it (none for an ensemble)
    scores: dict[str, float] = field(default_factory=dict)  # that epoch's validation scores, untuned post-processing
    tuned: dict[str, float] = field(default_factory=dict)  # validation scores at the tuned post-processing
    holdout: dict[str, float] = field(default_factory=dict)  # held-out scores at the post-processing validation chose
    post: dict | None = None  # the tuned post-processing (thresholds.json holds it too)
    object_diameter: float | None = None  # median object diameter (px) of the validation labels, instance tasks
    val_items: tuple[str, ...] = ()  # the images validated (and tuned) on
    holdout_items: tuple[str, ...] = ()  # the images held out, scored once
    members: tuple[dict, ...] = ()  # an ensemble's member runs (folder, epochs, minutes)
    out_of_fold: int = 0  # folds of a cross-validation ensemble tuned out-of-fold (0: not one)
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept

    @classmethod
    def from_dict(cls, data: dict, source: str | Path = METRICS) -> "RunMetrics":
        """The record of a metrics.json dict of any readable format; a known key of the wrong type is an
        :class:`InputError` naming ``source``."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object")
        version = data.get("format", 1)
        if not isinstance(version, int) or version > METRICS_FORMAT:
            raise InputError(f"{source}: metrics format {version} is newer than this biounet reads "
                             f"(up to {METRICS_FORMAT}); upgrade biounet to use it")
        fields_: dict[str, Any] = {"scores": {}, "tuned": {}, "holdout": {}, "extra": {}}

        def check(key: str, ok: bool, what: str) -> None:
            if not ok:
                raise InputError(f"{source}: {key} must be {what}, got {data[key]!r:.60}")

        for key, value in data.items():
            if key == "format":
                continue
            if key in ("epoch", "out_of_fold"):
                check(key, _is_int(value) or (key == "epoch" and value is None), "a whole number")
                fields_[key] = value
            elif key == "object_diameter":
                check(key, _is_number(value), "a number")
                fields_[key] = value
            elif key == "post":
                check(key, isinstance(value, dict), "an object")
                fields_[key] = dict(value)
            elif key in ("val_items", "holdout_items"):
                check(key, isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of names")
                fields_[key] = tuple(value)
            elif key == "members":
                check(key, isinstance(value, list) and all(isinstance(v, dict) for v in value), "a list of objects")
                fields_[key] = tuple(dict(v) for v in value)
            elif key.startswith("tuned_") and _is_number(value):
                fields_["tuned"][key[len("tuned_"):]] = value
            elif key.startswith("holdout_") and _is_number(value):
                fields_["holdout"][key[len("holdout_"):]] = value
            elif _is_number(value):
                fields_["scores"][key] = value
            else:
                fields_["extra"][key] = value
        return cls(**fields_)

    def as_dict(self) -> dict:
        """The flat dict metrics.json holds (without ``"format"``): fields left empty are left out."""
        out: dict[str, Any] = {} if self.epoch is None else {"epoch": self.epoch}
        out.update(self.scores)
        if self.members:
            out["members"] = [dict(m) for m in self.members]
        if self.out_of_fold:
            out["out_of_fold"] = self.out_of_fold
        out.update({"tuned_" + k: v for k, v in self.tuned.items()})
        if self.post is not None:
            out["post"] = dict(self.post)
        if self.object_diameter is not None:
            out["object_diameter"] = self.object_diameter
        if self.val_items:
            out["val_items"] = list(self.val_items)
        out.update({"holdout_" + k: v for k, v in self.holdout.items()})
        if self.holdout_items:
            out["holdout_items"] = list(self.holdout_items)
        out.update(self.extra)
        return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_metrics(run_dir: Path) -> RunMetrics:
    """The metrics.json record of a run or model folder (an empty one before the first validation)."""
    path = Path(run_dir) / METRICS
    return RunMetrics.from_dict(read_json(path), path) if path.is_file() else RunMetrics()


def save_metrics(run_dir: Path, metrics: RunMetrics) -> None:
    """metrics.json from ``metrics``, in the current format."""
    write_json(Path(run_dir) / METRICS, {"format": METRICS_FORMAT, **metrics.as_dict()})


def read_metrics(run_dir: Path) -> dict:
    """metrics.json of a run as a flat dict ({} before the first validation): :meth:`RunMetrics.as_dict`."""
    return load_metrics(run_dir).as_dict()


def write_metrics(run_dir: Path, metrics: dict | RunMetrics) -> None:
    """metrics.json from a record or a flat dict (checked as :meth:`RunMetrics.from_dict` reads it)."""
    if isinstance(metrics, dict):
        metrics = RunMetrics.from_dict(metrics, Path(run_dir) / METRICS)
    save_metrics(run_dir, metrics)


def validation_names(run_dir: Path) -> list[str]:
    """Names of the images a finished run validated on (and so never trained on)."""
    names = load_metrics(run_dir).val_items
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
    held = load_metrics(run_dir).holdout_items
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
