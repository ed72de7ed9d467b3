"""One config tree per run: frozen dataclasses, loaded from TOML, saved resolved as JSON.

Command-line overrides use dotted keys (``train.epochs=5``) applied by
:func:`apply_overrides`; nothing is configured by subclassing.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import InputError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the U-Net (Ronneberger et al. 2015 defaults except padding/width)."""

    in_channels: int = 1
    out_channels: int = 1  # 1: binary head (sigmoid); >1: softmax over classes
    depth: int = 4  # number of poolings
    base_features: int = 64
    kernel_size: int = 3
    pool_size: int = 2
    padding: str = "same"  # "valid" = paper (unpadded convs, crop-and-concat)
    batch_norm: bool = True
    dropout: float = 0.0  # Dropout2d at the end of the contracting path, as in the paper
    activation: str = "relu"  # relu | leaky_relu | elu | gelu
    upsampling: str = "transpose"  # transpose | resize (bilinear + 1x1... conv)


@dataclass(frozen=True)
class DataConfig:
    """Where the training data is and how patches are drawn from it."""

    kind: str = "stack"  # stack (image + label TIFF stacks) | folders | dsb (folder or zip) | coco (JSON)
    images: str = ""
    labels: str = ""  # label stack or mask folder; unused for dsb
    target: str = "binary"  # binary | membrane | border3 (bg / nucleus / touching border) | contour3 (bg / nucleus / every outline)
    border_fraction: float = 0.0  # contour3: outline band = max(2 px, this x each object's inscribed radius)
    foreground: str = "nonzero"  # for binary targets: "nonzero" or "zero" (ISBI: 0 = membrane)
    val_fraction: float = 0.2
    val_indices: tuple[int, ...] = ()  # explicit validation items; overrides val_fraction
    patch_size: int = 256
    patches_per_epoch: int = 200
    normalize: str = "percentile"  # percentile | percentile_invert (gray, objects bright) | nuclei (same, H&E via red) | minmax | range | none
    weight_map: bool = False  # paper's weight map (class balance + touching-object term)
    w0: float = 10.0
    sigma: float = 5.0
    num_workers: int = 0
    balance: bool = False  # sample images so each modality (fluorescence/brightfield/colour) weighs the same


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    affine: bool = True  # shift / scale / rotate
    elastic: bool = True
    intensity: bool = True
    elastic_sigma: float = 10.0
    elastic_grid: int = 3


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 4
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.99  # SGD only; the paper's value
    schedule: str = "cosine"  # cosine | step | none
    loss: str = "bce_dice"  # bce | dice | bce_dice | ce | ce_dice
    class_weights: tuple[float, ...] = ()  # softmax heads: cross-entropy weight per class; () = all 1
    early_stop: int = 0  # validations without improvement before stopping; 0 = off
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch default
    amp: bool = True  # mixed precision, used only on CUDA
    val_metric: str = "auto"  # auto | dice | v_rand | dsb
    val_every: int = 1  # validate every N epochs (and after the last one)
    init_weights: str = ""  # start from this model folder's weights (fine-tuning); "" = random init


@dataclass(frozen=True)
class PostConfig:
    """Probabilities -> mask/labels; thresholds are tuned on validation and stored."""

    mode: str = "mask"  # mask | instances
    threshold: float = 0.5
    seed_threshold: float = 0.7
    min_size: int = 10
    fill_holes: bool = True


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    post: PostConfig = field(default_factory=PostConfig)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Build a (nested) config dataclass, rejecting unknown keys with a clear message."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise InputError(f"config: unknown key '{key}' in [{cls.__name__}] (known: {', '.join(fields)})")
        ftype = fields[key].type
        sub = _dataclass_for(ftype)
        if sub is not None:
            kwargs[key] = from_dict(sub, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


_SECTIONS = {
    "ModelConfig": ModelConfig,
    "DataConfig": DataConfig,
    "AugmentConfig": AugmentConfig,
    "TrainConfig": TrainConfig,
    "PostConfig": PostConfig,
}


def _dataclass_for(ftype: Any) -> type | None:
    name = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", "")
    return _SECTIONS.get(name)


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot parse config ({exc})") from None
    return from_dict(RunConfig, data)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides (values parsed as JSON when possible)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override '{item}': expected section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise InputError(f"override '{item}': unknown section '{part}'")
            node = node[part]
        if parts[-1] not in node:
            raise InputError(f"override '{item}': unknown key '{parts[-1]}'")
        node[parts[-1]] = _parse_value(value)
    return from_dict(RunConfig, data)
