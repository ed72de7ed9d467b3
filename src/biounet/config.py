"""One config tree per run: frozen dataclasses, loaded from TOML, saved resolved as JSON.

This module is the data and its value checks: :func:`from_dict` checks every
key's type, allowed values and range (one line naming the key). A config names
its task (``task = "nuclei"``), which fills in every key the file leaves out
and checks the whole for consistency, so configs are *built* one level up, in
:mod:`biounet.tasks` (``build_config``, ``load_config``, ``apply_overrides``),
before any data is read. Nothing is configured by subclassing.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .io import InputError
from .normalize import Mode as NormalizeMode

# data.kind: where the training images come from; each biounet.data.dataset.Item keeps its source's kind
# and is read by it (a "folders" item: one image file and its mask file; a "stack" item: one page of each)
DataKind = Literal["stack", "folders", "dsb", "coco"]
DATA_KINDS: tuple[str, ...] = typing.get_args(DataKind)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the U-Net (Ronneberger et al. 2015 defaults except padding/width)."""

    in_channels: int = 1
    out_channels: int = 1  # 1: binary head (sigmoid); >1: softmax over classes
    depth: int = 4  # number of poolings
    # 16, the shipped models' width (1.9 M parameters for a nuclei net), not the paper's 64 (31 M, 16x the
    # multiply-adds): a config-less `train --task ...` should train at the measured recipe's cost on a CPU
    base_features: int = 16
    kernel_size: int = 3
    pool_size: int = 2
    padding: Literal["same", "valid"] = "same"  # "valid" = paper (unpadded convs, crop-and-concat)
    batch_norm: bool = True
    dropout: float = 0.0  # Dropout2d at the end of the contracting path, as in the paper
    activation: Literal["relu", "leaky_relu", "elu", "gelu"] = "relu"
    upsampling: Literal["transpose", "resize"] = "transpose"  # resize = bilinear + 1x1 conv
    # >1: that many U-Nets of this shape whose probabilities are averaged; made from trained runs by
    # `biounet ensemble`, never trained as one
    members: int = 1


@dataclass(frozen=True)
class DataConfig:
    """Where the training data is and how patches are drawn from it."""

    kind: DataKind = "stack"  # stack = image + label TIFF stacks; folders = image + mask files; dsb = folder or zip
    images: str = ""
    labels: str = ""  # label stack or mask folder; unused for dsb
    # binary | membrane | border3 (bg / nucleus / touching border) | contour3 (bg / nucleus / every outline)
    # | contour4 (contour3 + a fourth class where two nuclei touch, taken out of the outline band)
    # | depth3 (contour3's classes as soft targets: interior = depth in the nucleus / its inscribed radius)
    target: Literal["binary", "membrane", "border3", "contour3", "contour4", "depth3"] = "binary"
    border_fraction: float = 0.0  # contour3/4: outline band = max(2 px, this x each object's inscribed radius)
    foreground: Literal["nonzero", "zero"] = "nonzero"  # binary targets: which labels are foreground
    val_fraction: float = 0.2
    val_indices: tuple[int, ...] = ()  # explicit validation items; overrides val_fraction
    # k-fold cross-validation: >= 2 splits the images left after the holdout into this many seeded folds
    # and validates on fold ``fold`` (overrides val_fraction); `biounet ensemble` of runs on different
    # folds tunes its post-processing on every member's own validation fold (out-of-fold). 0 = off.
    # With folds = 1 / val_fraction, fold 0 is the plain split's validation set (same seed, same draw).
    folds: int = 0
    fold: int = 0
    # a seeded fraction held out before the validation split: never trained on, never used to pick the
    # epoch or thresholds, scored once at the end (a selection-free score beside the tuned one)
    holdout_fraction: float = 0.0
    # seeds the held-out and validation draws; -1 = train.seed. Fix it to train again with another
    # train.seed (initialisation, patch order) on the same images, e.g. to measure seed-to-seed spread
    split_seed: int = -1
    patch_size: int = 256
    patches_per_epoch: int = 200
    # see biounet.normalize: per-image percentiles, optionally as one "objects are bright" channel
    normalize: NormalizeMode = "percentile"
    # -1: images as they are; k >= 0: channel k of multi-channel images (a TIFF's C axis, e.g. DAPI of
    # DAPI + GFP, or plane k of RGB), in training and, by default, when the model predicts
    channel: int = -1
    weight_map: bool = False  # paper's weight map (class balance + touching-object term)
    w0: float = 10.0
    # paper: eq. 2 (class balance + touching term on background pixels); touch: 1 + the touching term on
    # every pixel, both sides of a cut between touching objects, without re-balancing the classes
    weight_kind: Literal["paper", "touch"] = "paper"
    sigma: float = 5.0
    num_workers: int = 0
    balance: bool = False  # sample images so each modality (fluorescence/brightfield/colour) weighs the same
    # with balance: an image is drawn with weight 1 / (training images of its modality) ** balance_power;
    # 1 = every modality weighs the same, 0.5 = half-way (on a log scale) between that and as found
    balance_power: float = 1.0
    # train, validate and score only images of these modalities ("dark" = fluorescence, "bright" =
    # brightfield, "colour" = stained), chosen after the split: a modality expert keeps the held-out
    # and validation images of the run without the filter, so the two compare image for image
    modalities: tuple[Literal["dark", "bright", "colour"], ...] = ()
    # leave groups out: a CSV naming each image's group (experiment; columns ``image``, ``group``, e.g.
    # configs/dsb2018-groups.csv) and the groups never trained or validated on (benchmarks/generalize.py
    # scores them). Taken out after the held-out draw: the held-out images are the full run's less those groups
    exclude_groups: tuple[str, ...] = ()
    groups: str = ""

    def __post_init__(self) -> None:
        if self.exclude_groups and not self.groups:
            raise InputError("config: data.exclude_groups needs data.groups (a CSV of image,group)")
        if self.folds == 1:
            raise InputError("config: data.folds = 1 is not cross-validation; use 0 (off) or 2 and more")
        if self.folds and self.fold >= self.folds:
            raise InputError(f"config: data.fold = {self.fold} must be below data.folds = {self.folds} "
                             f"(0..{self.folds - 1})")
        if self.folds and self.val_indices:
            raise InputError("config: data.folds and data.val_indices both choose the validation images; set one")


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    affine: bool = True  # shift / scale / rotate
    elastic: bool = True
    intensity: bool = True
    # H&E stain jitter on the raw RGB of stained (colour-modality) images, before normalisation: each
    # stain's optical density scaled by U(1-s, 1+s) and shifted (Tellez et al. 2018's HED jitter); 0 = off
    stain: float = 0.0
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    # zoom drawn log-uniformly in [lo, hi] (> 1 zooms in); widen it when objects vary in size between images
    scale_range: tuple[float, ...] = (0.8, 1.25)
    # warp each patch from a larger crop of its image, so rotated corners and zoomed-out borders show
    # image instead of the patch's mirror image (which doubles objects cut by the patch edge)
    context: bool = False
    # other labs' images (transforms.random_degrade): wide gamma (0.5-2), low contrast (down to x0.3),
    # blur and Gaussian or Poisson-like noise, each on a share of the patches, after ``intensity``
    degrade: bool = False
    # uneven images (transforms.random_uneven): a smooth illumination gain (x0.25-1) and large soft bright
    # plateaus (cytoplasm under brightfield nuclei), each on half the patches, after ``degrade``
    uneven: bool = False
    # small nuclei seen enlarged (transforms.random_lowres): a third of the patches shrunk 1.5-4x and enlarged
    # back, the look of an image --diameter auto enlarged, after ``uneven``
    lowres: bool = False

    def __post_init__(self) -> None:
        lo_hi = self.scale_range
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise InputError(f"config: augment.scale_range = {json.dumps(list(lo_hi))} must be [lo, hi] "
                             "with 0 < lo <= hi")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 4
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0  # adam and sgd: an L2 term in the gradient; adamw: decoupled (Loshchilov & Hutter)
    momentum: float = 0.99  # SGD only; the paper's value
    schedule: Literal["cosine", "step", "none"] = "cosine"
    loss: Literal["bce", "dice", "bce_dice", "ce", "ce_dice", "ce_lovasz"] = "bce_dice"  # ce_lovasz: CE + Lovász-softmax (integer targets)
    class_weights: tuple[float, ...] = ()  # softmax heads: cross-entropy weight per class; () = all 1
    early_stop: int = 0  # validations without improvement before stopping; 0 = off
    seed: int = 0
    threads: int = 0  # torch threads; 0 = torch default
    amp: bool = True  # mixed precision, used only on CUDA
    channels_last: bool = True  # NHWC activations: ~1.3x faster CPU training steps with oneDNN (benchmarks/speed.py)
    val_every: int = 1  # validate every N epochs (and after the last one)
    init_weights: str = ""  # start from this model folder's weights (fine-tuning); "" = random init
    # > 0: validate, keep and ship an exponential moving average of the weights (this decay per optimiser
    # step, e.g. 0.999: about the last 1000 steps), a free ensemble along the run; 0 = the live weights
    ema: float = 0.0
    # > 0: stochastic weight averaging over this fraction of the last epochs: the cosine schedule reaches
    # swa_lr * lr where they begin and stays there, and the equal-weight average of the weights at the end
    # of each of those epochs is validated, kept and shipped (Izmailov et al. 2018); 0 = off
    swa: float = 0.0
    swa_lr: float = 0.2  # the flat learning rate of the averaged epochs, as a fraction of lr

    def __post_init__(self) -> None:
        if self.swa and self.ema:
            raise InputError("config: train.swa and train.ema are two ways of averaging the weights; set one")
        if self.swa and self.schedule != "cosine":
            raise InputError(f"config: train.swa needs train.schedule = \"cosine\" (it ends that schedule "
                             f"flat), not \"{self.schedule}\"")


@dataclass(frozen=True)
class PostConfig:
    """Probabilities -> mask/labels; thresholds are tuned on validation and stored."""

    mode: Literal["mask", "instances"] = "mask"
    threshold: float = 0.5
    seed_threshold: float = 0.7
    # 3-class instances: > 0 also splits a seed where its interior probability dips by at least this
    # much between two peaks (h-maxima), so touching nuclei joined by a weak border still get two seeds
    seed_h: float = 0.0
    # 3-class instances: drop objects whose mean foreground probability is below this (0 = keep all)
    min_score: float = 0.0
    min_size: int = 10
    fill_holes: bool = True

    @property
    def instances(self) -> bool:
        """Whether this post-processing outputs instance labels (int32, one id per object) rather than a
        mask (uint8, 255): the one place that question is answered."""
        return self.mode == "instances"


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    # what the run predicts and how it is scored: a name in biounet.tasks.TASKS, the one list of tasks
    # (checked there, by build_config, before this dataclass is built)
    task: str = "binary"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    post: PostConfig = field(default_factory=PostConfig)


# Inclusive numeric bounds (None = open); checked with the types in build_config.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "model.in_channels": (1, None), "model.out_channels": (1, None), "model.depth": (0, 10),
    "model.base_features": (1, None), "model.kernel_size": (1, None), "model.pool_size": (2, None),
    "model.dropout": (0, 1), "model.members": (1, 16),
    "data.border_fraction": (0, None), "data.val_fraction": (0, 1), "data.holdout_fraction": (0, 1),
    "data.split_seed": (-1, None), "data.channel": (-1, None), "data.patch_size": (1, None),
    "data.patches_per_epoch": (1, None), "data.w0": (0, None), "data.sigma": (1e-6, None),
    "data.num_workers": (0, None), "data.balance_power": (0, 1), "data.folds": (0, 100), "data.fold": (0, 99),
    "augment.elastic_sigma": (0, None), "augment.stain": (0, 1), "augment.elastic_grid": (2, None),
    "train.epochs": (1, None), "train.batch_size": (1, None), "train.lr": (0, None),
    "train.weight_decay": (0, None), "train.momentum": (0, 1), "train.early_stop": (0, None),
    "train.threads": (0, None), "train.val_every": (1, None), "train.class_weights": (0, None),
    "train.ema": (0, 0.99999), "train.swa": (0, 0.9), "train.swa_lr": (1e-6, 1),
    "post.threshold": (0, 1), "post.seed_threshold": (0, 1), "post.seed_h": (0, 1), "post.min_score": (0, 1),
    "post.min_size": (0, None),
}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _check_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` (int -> float, list -> tuple) or an InputError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool):
            raise InputError(f"config: {key} = {json.dumps(value)} is not allowed (allowed: {', '.join(allowed)})")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config: {key} = {json.dumps(value)} must be a list of {_type_name(item)[2:]}s")
        return tuple(_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, True)
    if not ok:
        raise InputError(f"config: {key} = {json.dumps(value)} must be {_type_name(hint)}")
    return float(value) if hint is float else value


def _check_range(key: str, value: Any) -> None:
    lo, hi = RANGES.get(key.split("[")[0], (None, None))
    for v in value if isinstance(value, tuple) else (value,):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bound = f">= {lo:g}" if hi is None else f"<= {hi:g}" if lo is None else f"in [{lo:g}, {hi:g}]"
                raise InputError(f"config: {key} = {json.dumps(value)} must be {bound}")


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """'; did you mean 'lr'?' for a near miss of a known key, else '': a typo should name its fix."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build a (nested) config dataclass, checking every key, type, allowed value and range."""
    if not isinstance(data, dict):
        raise InputError(f"config: [{prefix.rstrip('.') or 'top level'}] must be a table, got {json.dumps(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        if key not in fields:
            raise InputError(f"config: unknown key '{key}' in {where}{did_you_mean(key, fields)} "
                             f"(known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(prefix + key, value, hint)
            _check_range(prefix + key, kwargs[key])
    return cls(**kwargs)


def merge(base: dict, over: dict) -> dict:
    """``over`` laid on ``base``, section by section."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_value(text: str) -> Any:
    """An override's value: JSON when it parses, true/false in any case, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


