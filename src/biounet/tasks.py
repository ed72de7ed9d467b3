"""What a run predicts, one class per problem, chosen by the config's ``task`` key.

A task owns every decision that used to be a string compared in many places:
the training target made from label images, the head size and losses that fit
it, its defaults (a config is the task plus what differs), post-processing and
its tuning grid, the per-image and dataset scores used to pick epochs and
thresholds, and the headline metrics a model reports. ``check`` turns an
inconsistent config into one line at load time.

* ``binary``: foreground / background (sigmoid or softmax head), Dice.
* ``membrane``: EM membranes, ISBI 2012 labels (0 = membrane); V-Rand on the
  cells between predicted membranes (the leaderboard's thinned variant).
* ``nuclei``: instances from a 3-class head (background, interior, outline
  band; or 4 classes with the contact between touching nuclei apart; or the
  3 classes as soft targets, interior = depth in the nucleus) and a seeded
  watershed; the DSB 2018 score.

Adding a task is a class here plus a registry entry; the loop, prediction and
CLI ask the task and never the other way round. Because the task supplies the
defaults and the final check, configs are built here: :func:`build_config`
(a dict), :func:`load_config` (a TOML/JSON file), :func:`apply_overrides`
(``section.key=value`` strings).
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .config import PostConfig, RunConfig, did_you_mean, from_dict, merge, parse_value, to_dict
from .io import InputError

_SIGMOID_LOSSES = ("bce", "dice", "bce_dice")
_SOFTMAX_LOSSES = ("ce", "dice", "ce_dice", "ce_lovasz")


@dataclass(frozen=True)
class Task:
    """A task bound to one run's config; subclasses fill in the class variables and methods."""

    cfg: RunConfig

    name: ClassVar[str]
    metric: ClassVar[str]  # the validation score that picks epochs (higher is better)
    headline: ClassVar[tuple[str, ...]]  # what `biounet models` shows
    found: ClassVar[str]  # a score that is 0 when the model finds nothing (training ends with a warning then)
    defaults: ClassVar[dict]  # config sections the task fills in when a config leaves them out
    grid: ClassVar[dict[str, list]]  # post-processing values tried when tuning on validation images
    # then tried around the grid's best setting: filters that add little to the grid's cost this way
    refine: ClassVar[dict[str, list]] = {}
    tune_each_validation: ClassVar[bool] = True  # score epochs at their best threshold (cheap tasks only)
    # labels are object instances (their median size is recorded): the task's own output, its default
    # post-processing, is instance labels (PostConfig.instances; set for each subclass from ``defaults``)
    instances: ClassVar[bool] = False
    targets: ClassVar[tuple[str, ...]]  # the data.target values the task trains on (the first: its default)
    channels: ClassVar[tuple[str, ...]]  # the head's classes, as an exported model names its output channels
    # a shipped sample (under biounet/samples) and the side of its centre crop: an export's test input
    sample: ClassVar[tuple[str, int]] = ("isbi2012/test-volume-15.tif", 256)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.instances = PostConfig(**cls.defaults.get("post", {})).instances

    # ---- configuration -------------------------------------------------------
    def check(self) -> None:
        """Raise one-line InputErrors for settings that cannot work together."""
        m, t = self.cfg.model, self.cfg.train
        softmax = m.out_channels > 1
        losses = _SOFTMAX_LOSSES if softmax else _SIGMOID_LOSSES
        if t.loss not in losses:
            head = f"a {m.out_channels}-channel softmax head" if softmax else "a 1-channel sigmoid head"
            self._fail(f"train.loss = '{t.loss}' does not fit {head} (use {', '.join(losses)})")
        if t.class_weights and (not softmax or len(t.class_weights) != m.out_channels):
            self._fail(f"train.class_weights needs one weight per class of a softmax head "
                       f"({m.out_channels} channels), got {list(t.class_weights)}")
        if t.class_weights and sum(t.class_weights) == 0:
            self._fail("train.class_weights must not all be 0")

    def _fail(self, msg: str) -> None:
        raise InputError(f"config: task '{self.name}': {msg}")

    def _require(self, key: str, value, allowed: Sequence) -> None:
        if value not in allowed:
            want = " or ".join(repr(a) if isinstance(a, str) else str(a) for a in allowed)
            got = repr(value) if isinstance(value, str) else value
            self._fail(f"needs {key} = {want}, got {got}")

    # ---- training ------------------------------------------------------------
    def target(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) integer labels -> training target: float {0,1} (sigmoid), int64 classes (softmax),
        or (K, H, W) float class probabilities (softmax with soft targets)."""
        raise NotImplementedError

    def weight_objects(self, labels: np.ndarray) -> np.ndarray:
        """The objects the paper's weight map separates (its touching-border term)."""
        return labels

    # ---- prediction and scores -------------------------------------------------
    def segment(self, probs: np.ndarray, post: PostConfig) -> np.ndarray:
        """(K, H, W) probabilities -> mask (uint8, 255) or instance labels (int32)."""
        from .postprocess import segment

        return segment(probs, post)

    def image_score(self, labels: np.ndarray, output: np.ndarray) -> float:
        """One image's score of a :meth:`segment` output against its raw labels (for tuning)."""
        raise NotImplementedError

    def scores(self, labels: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        """Validation scores of :meth:`segment` outputs; ``scores[self.metric]`` picks epochs."""
        raise NotImplementedError


class BinaryTask(Task):
    name = "binary"
    metric = "dice"
    headline = ("dice", "iou")
    found = "dice"
    targets = ("binary",)
    channels = ("foreground",)
    defaults: ClassVar[dict] = {"model": {"out_channels": 1}, "data": {"target": "binary"},
                                "train": {"loss": "bce_dice"}, "post": {"mode": "mask"}}
    grid: ClassVar[dict[str, list]] = {"threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}

    def check(self) -> None:
        self._require("data.target", self.cfg.data.target, self.targets)
        super().check()

    def _truth(self, labels: np.ndarray) -> np.ndarray:
        return (labels != 0) if self.cfg.data.foreground == "nonzero" else (labels == 0)

    def target(self, labels: np.ndarray) -> np.ndarray:
        return self._truth(labels).astype(np.float32)

    def image_score(self, labels: np.ndarray, output: np.ndarray) -> float:
        from .metrics.semantic import dice

        return dice(self._truth(labels), output > 0)

    def scores(self, labels: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        from .metrics.semantic import dice, iou

        pairs = [(self._truth(lab), out > 0) for lab, out in zip(labels, outputs)]
        return {"dice": float(np.mean([dice(t, p) for t, p in pairs])),
                "iou": float(np.mean([iou(t, p) for t, p in pairs]))}


class MembraneTask(Task):
    """ISBI 2012: label 0 = membrane, the class predicted; cells are what V-Rand scores."""

    name = "membrane"
    metric = "v_rand"
    headline = ("v_rand", "v_info", "pixel_error")
    found = "membrane_dice"  # V-Rand is no floor: a slice with no membrane found can score 1
    targets = ("membrane",)
    channels = ("membrane",)
    defaults: ClassVar[dict] = {"model": {"out_channels": 1}, "data": {"target": "membrane"},
                                "train": {"loss": "bce_dice"}, "post": {"mode": "mask"}}
    grid: ClassVar[dict[str, list]] = {"threshold": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]}

    def check(self) -> None:
        self._require("data.target", self.cfg.data.target, self.targets)
        self._require("model.out_channels", self.cfg.model.out_channels, (1,))
        super().check()

    def target(self, labels: np.ndarray) -> np.ndarray:
        return (labels == 0).astype(np.float32)

    def segment(self, probs: np.ndarray, post: PostConfig) -> np.ndarray:
        """A membrane mask (uint8, 255 = membrane) or, with ``post.mode = "instances"``, cell labels."""
        from .postprocess import cells_from_membrane, segment

        if post.instances:
            return cells_from_membrane(np.asarray(probs).reshape(np.shape(probs)[-2:]), post)
        return segment(probs, post)

    def weight_objects(self, labels: np.ndarray) -> np.ndarray:
        from skimage.measure import label

        return label(labels != 0, connectivity=1)

    def image_score(self, labels: np.ndarray, output: np.ndarray) -> float:
        return self.scores([labels], [output])["v_rand"]

    def scores(self, labels: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        """Masks: the leaderboard's thinned scores; cell labels (instances): scored as they are."""
        from .metrics.em import evaluate_cells, evaluate_membranes

        truth = np.stack([lab != 0 for lab in labels])
        if outputs[0].dtype != np.uint8:  # cell labels, not a 255 = membrane mask
            return evaluate_cells(truth, np.stack(outputs))
        return evaluate_membranes(truth, np.stack([o == 0 for o in outputs]))


class NucleiTask(Task):
    """Nuclei instances: background / interior / outline band, seeded watershed, DSB 2018 score."""

    name = "nuclei"
    metric = "dsb"
    headline = ("dsb", "ap50", "ap75")
    found = "dsb"
    targets = ("contour3", "border3", "contour4", "depth3")
    channels = ("background", "nucleus", "outline")
    # fluorescence, where the spec's percentile scaling is exactly biounet's "nuclei" normalisation
    sample = ("dsb2018/03398329ced0c23b9ac3fac84dd53a87d9ffe4d9d10f1b5fe8df8fac12380776.png", 256)
    defaults: ClassVar[dict] = {
        "model": {"in_channels": 1, "out_channels": 3},
        "data": {"target": "contour3", "border_fraction": 0.5, "normalize": "nuclei"},
        "train": {"loss": "ce_dice"},
        "post": {"mode": "instances", "threshold": 0.5, "seed_threshold": 0.7, "min_size": 10},
    }
    # min_size up to 40 px: fragments of 20-40 px cost more (false positives) than the few
    # nuclei that small that they drop (the median nucleus is ~17 px across, ~230 px in area).
    # seed_h 0.5 with a low seed threshold: a seed per interior peak that stands 0.5 above its saddle;
    # the shipped pair's pick, +0.008 on validation and +0.005 held-out (README, DSB 2018 nuclei).
    grid: ClassVar[dict[str, list]] = {"threshold": [0.3, 0.4, 0.5, 0.6], "seed_threshold": [0.2, 0.5, 0.7, 0.9],
                                       "seed_h": [0.0, 0.5], "min_size": [10, 20, 30, 40]}
    # objects the network is unsure of (mean foreground probability below min_score) are mostly false
    # positives; tuned with min_size, after the grid, so 16 more settings and not 4x the grid
    refine: ClassVar[dict[str, list]] = {"min_score": [0.0, 0.8, 0.85, 0.9], "min_size": [10, 20, 30, 40]}
    tune_each_validation = False  # 144 post-processings per image: tuned once, after training

    def check(self) -> None:
        self._require("data.target", self.cfg.data.target, self.targets)
        self._require("model.out_channels", self.cfg.model.out_channels,
                      (4,) if self.cfg.data.target == "contour4" else (3,))
        self._require("post.mode", self.cfg.post.mode, ("instances",))
        if self.cfg.data.target == "depth3" and self.cfg.train.loss == "ce_lovasz":
            self._fail("train.loss = 'ce_lovasz' needs integer classes; data.target = 'depth3' gives soft ones")
        super().check()

    def target(self, labels: np.ndarray) -> np.ndarray:
        from .data.targets import border_target, contact_target, depth_target

        d = self.cfg.data
        if d.target == "depth3":  # soft (3, H, W) probabilities; the border fraction is unused
            return depth_target(labels)
        if d.target == "contour4":
            return contact_target(labels, border_fraction=d.border_fraction).astype(np.int64)
        contours = d.target == "contour3"  # border3 ignores the fraction
        return border_target(labels, contours=contours, border_fraction=d.border_fraction).astype(np.int64)

    def image_score(self, labels: np.ndarray, output: np.ndarray) -> float:
        from .metrics.instance import dsb_score

        return dsb_score(labels, output)

    def scores(self, labels: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        from .metrics.instance import evaluate_instances

        summary, _ = evaluate_instances((str(i), lab, out) for i, (lab, out) in enumerate(zip(labels, outputs)))
        return {"dsb": summary["dsb_score"], "ap50": summary["ap50"], "ap75": summary["ap75"]}


TASKS: dict[str, type[Task]] = {t.name: t for t in (BinaryTask, MembraneTask, NucleiTask)}


def get_task(cfg: RunConfig) -> Task:
    """The task of a run, bound to its config."""
    if cfg.task not in TASKS:
        raise InputError(f"config: task = '{cfg.task}' is not allowed (allowed: {', '.join(TASKS)})")
    return TASKS[cfg.task](cfg)


def legacy_task(target: str, metric: str = "auto") -> str:
    """The task a config written before tasks existed (format 1) meant: the one whose metric its explicit
    ``train.val_metric`` names, else the one that trains on its data.target (binary when none does)."""
    by_metric = {t.metric: name for name, t in TASKS.items()}
    if metric in by_metric:
        return by_metric[metric]
    return next((name for name, t in TASKS.items() if target in t.targets), BinaryTask.name)


# ---- building checked configs ------------------------------------------------------
def build_config(raw: dict) -> RunConfig:
    """The task's defaults under ``raw``, checked value by value, then as a whole by the task."""
    task = raw.get("task", RunConfig.task)
    if task not in TASKS:
        raise InputError(f"config: task = {json.dumps(task)} is not allowed (allowed: {', '.join(TASKS)})")
    cfg = from_dict(RunConfig, merge(TASKS[task].defaults, raw))
    get_task(cfg).check()
    return cfg


def load_config(path: str | Path) -> RunConfig:
    """A TOML (or JSON) config file -> checked :class:`RunConfig`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse config ({exc})") from None
    try:
        return build_config(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str], values: dict[str, Any] | None = None) -> RunConfig:
    """Apply ``section.key=value`` overrides (values parsed as JSON when possible), then ``values``
    (``{"section.key": value}``, taken as they are: what command-line flags set), then re-check.

    An override of ``task`` brings that task's defaults along (other overrides
    in the same call still win), so ``--set task=membrane`` alone is consistent.
    """
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override '{item}': expected section.key=value")
        key, value = item.split("=", 1)
        parsed.append((item, key.strip().split("."), parse_value(value)))
    parsed += [(f"{key}={value}", key.split("."), value) for key, value in (values or {}).items()]
    data = to_dict(cfg)
    new_task = next((v for _, parts, v in reversed(parsed) if parts == ["task"]), cfg.task)
    if new_task != cfg.task and new_task in TASKS:
        data = merge(data, TASKS[new_task].defaults)
    for item, parts, value in parsed:
        node = data
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                sections = [k for k, v in node.items() if isinstance(v, dict)]
                raise InputError(f"override '{item}': unknown section '{part}'{did_you_mean(part, sections)}")
            node = node[part]
        if parts[-1] not in node:
            raise InputError(f"override '{item}': unknown key '{parts[-1]}'{did_you_mean(parts[-1], node)}")
        node[parts[-1]] = value
    return build_config(data)
