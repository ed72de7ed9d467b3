"""The U-Net of Ronneberger et al. (2015), configurable.

``padding="valid"`` is the paper's network: unpadded 3x3 convolutions, so each
level loses a border, and skip connections are centre-cropped before being
concatenated. Its output size is computed by :meth:`UNet.output_shape`, never
guessed. ``padding="same"`` keeps the size; inputs whose size is not a multiple
of ``pool_size ** depth`` are reflect-padded inside ``forward`` and cropped back,
so any (H, W) works.
"""
from __future__ import annotations

import dataclasses
import logging
from functools import cached_property
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig

if TYPE_CHECKING:
    from ..tiling import NetGeometry

log = logging.getLogger(__name__)

_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": lambda: nn.GELU(),
}


def _check(cfg: ModelConfig) -> None:
    if cfg.padding not in ("valid", "same"):
        raise ValueError(f"model.padding must be 'valid' or 'same', got {cfg.padding!r}")
    if cfg.upsampling not in ("transpose", "resize"):
        raise ValueError(f"model.upsampling must be 'transpose' or 'resize', got {cfg.upsampling!r}")
    if cfg.activation not in _ACTIVATIONS:
        raise ValueError(f"model.activation must be one of {sorted(_ACTIVATIONS)}, got {cfg.activation!r}")
    if cfg.depth < 0 or cfg.base_features < 1 or cfg.kernel_size < 1 or cfg.pool_size < 2:
        raise ValueError(f"invalid model config: {cfg}")
    if cfg.padding == "same" and cfg.kernel_size % 2 == 0:
        raise ValueError("model.kernel_size must be odd for 'same' padding")


class DoubleConv(nn.Sequential):
    """Two (conv -> [BN] -> activation) layers: one U-Net level."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig) -> None:
        pad = cfg.kernel_size // 2 if cfg.padding == "same" else 0
        layers: list[nn.Module] = []
        for c_in in (cin, cout):
            layers.append(nn.Conv2d(c_in, cout, cfg.kernel_size, padding=pad, bias=not cfg.batch_norm))
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(_ACTIVATIONS[cfg.activation]())
        super().__init__(*layers)


class Up(nn.Module):
    """Up-sample by ``pool_size`` and halve the channels ("up-conv" in the paper)."""

    def __init__(self, cin: int, cout: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.scale = cfg.pool_size
        self.mode = cfg.upsampling
        if cfg.upsampling == "transpose":
            self.conv = nn.ConvTranspose2d(cin, cout, cfg.pool_size, stride=cfg.pool_size)
        else:
            self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "resize":
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv(x)


def pad_to_multiple(x: torch.Tensor, mult: int) -> torch.Tensor:
    """Reflect-pad (B, C, H, W) so H and W are multiples of ``mult``, split evenly (:func:`center_crop` undoes it).

    Sides too short to reflect are padded by repetition.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop the centre (h, w) of a (B, C, H, W) tensor."""
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


class UNet(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H', W') logits.

    H' = H for ``same`` nets; for ``valid`` nets H' = :meth:`output_shape`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        _check(cfg)
        self.cfg = cfg
        widths = [cfg.base_features * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList()
        cin = cfg.in_channels
        for w in widths:
            self.down.append(DoubleConv(cin, w, cfg))
            cin = w
        self.pool = nn.MaxPool2d(cfg.pool_size)
        self.drop = nn.Dropout2d(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.ups.append(Up(w * 2, w, cfg))
            self.up_convs.append(DoubleConv(w * 2, w, cfg))
        self.head = nn.Conv2d(widths[0], cfg.out_channels, 1)

    # ---- geometry -------------------------------------------------------
    def _shrink(self) -> int:
        """Pixels lost by one DoubleConv (0 for same padding)."""
        return 0 if self.cfg.padding == "same" else 2 * (self.cfg.kernel_size - 1)

    def _output_or_none(self, n: int) -> int | None:
        s, p = self._shrink(), self.cfg.pool_size
        size = n
        for _ in range(self.cfg.depth):
            size -= s
            if size <= 0 or size % p:
                return None
            size //= p
        size -= s
        if size <= 0:
            return None
        for _ in range(self.cfg.depth):
            size = size * p - s
        return size if size > 0 else None

    def output_size(self, n: int) -> int:
        """Output length along one axis for input length ``n``; ValueError if invalid."""
        if self.cfg.padding == "same":
            return n
        out = self._output_or_none(n)
        if out is None:
            raise ValueError(f"input size {n} is not valid for this valid-padding U-Net; "
                             f"the next valid size is {self.valid_input_size(n)}")
        return out

    def output_shape(self, hw: tuple[int, int]) -> tuple[int, int]:
        return self.output_size(hw[0]), self.output_size(hw[1])

    def valid_input_size(self, n: int) -> int:
        """Smallest input length >= n accepted by the net (any n for same nets)."""
        if self.cfg.padding == "same":
            return n
        m = max(n, 1)
        while self._output_or_none(m) is None:
            m += 1
        return m

    @property
    def margin(self) -> int:
        """Pixels lost on each side of a valid net ((in - out) / 2); 0 for same nets."""
        if self.cfg.padding == "same":
            return 0
        n = self.valid_input_size(1)
        return (n - self.output_size(n)) // 2

    @cached_property
    def geometry(self) -> "NetGeometry":
        """What overlap-tile inference needs to know about this net (see :class:`~biounet.tiling.NetGeometry`).

        Valid inputs of a valid net are ``min_input + k * align``; ``context``
        is the receptive field, measured once (a gradient probe, a fraction of a
        second) the first time it is asked for, and reused for every image.
        """
        from ..tiling import NetGeometry

        align = self.cfg.pool_size**self.cfg.depth
        return NetGeometry(margin=self.margin, align=align, min_input=self.valid_input_size(1),
                           context=receptive_field(self, self.cfg.in_channels))

    # ---- forward ---------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected (B, {self.cfg.in_channels}, H, W) input, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.cfg.padding == "same":
            x = pad_to_multiple(x, self.cfg.pool_size**self.cfg.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.cfg.depth:
                skips.append(x)
                x = self.pool(x)
        x = self.drop(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips)):
            x = up(x)
            if skip.shape[-2:] != x.shape[-2:]:  # valid nets only; same nets export without crop ops
                skip = center_crop(skip, x.shape[-2], x.shape[-1])
            x = conv(torch.cat([skip, x], dim=1))
        x = self.head(x)
        if self.cfg.padding == "same" and x.shape[-2:] != (h, w):
            x = center_crop(x, h, w)
        return x


def receptive_field(module: nn.Module, in_channels: int, size: int = 64, max_size: int = 1024) -> int:
    """Receptive field side (pixels) of a 2D network, measured empirically.

    The gradient of the centre output pixel w.r.t. a random input (eval mode,
    4 random inputs, support unioned) has the receptive field as its support.
    The input grows until the support no longer touches its border. Max
    pooling passes gradient only to each window's maximum, so the result may
    fall short of the theoretical field by a pixel or two; it is meant for
    choosing overlaps, not for geometry (use ``margin`` for that). 0 means
    nothing reached the centre output (a dead network).
    The module's train/eval mode is restored afterwards.
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    valid_size = getattr(module, "valid_input_size", lambda n: n)
    gen = torch.Generator().manual_seed(0)
    was_training = module.training
    module.eval()
    try:
        n = size
        while True:
            n_in = valid_size(n)
            x = torch.randn(4, in_channels, n_in, n_in, generator=gen).to(device, dtype).requires_grad_(True)
            with torch.enable_grad():
                y = module(x)
                centre = y[:, :, y.shape[-2] // 2, y.shape[-1] // 2].sum()
                (grad,) = torch.autograd.grad(centre, x)
            support = grad.abs().sum((0, 1)) > 0
            if not support.any():  # a dead net (e.g. all ReLUs off at init): nothing to measure
                return 0
            rows = torch.nonzero(support.any(1)).flatten()
            cols = torch.nonzero(support.any(0)).flatten()
            touches = bool(rows[0] == 0 or cols[0] == 0 or rows[-1] == n_in - 1 or cols[-1] == n_in - 1)
            if not touches or n_in >= max_size:
                if touches:
                    log.warning("receptive field reaches the %d-pixel probe's border; it is at least that", n_in)
                return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1
            n = 2 * n_in
    finally:
        module.train(was_training)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Each conv -> batch-norm pair of an eval-mode network as one conv (torch's ``fuse_conv_bn_eval``).

    In inference a batch norm is a per-channel affine map, so it folds into the
    preceding convolution's weights and bias: one pass over the activations
    instead of two. Works in place on the module given; call it on a copy.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in module.modules():
        if isinstance(block, nn.Sequential):
            layers = list(block)
            for i in range(len(layers) - 1):
                if isinstance(layers[i], nn.Conv2d) and isinstance(layers[i + 1], nn.BatchNorm2d):
                    block[i] = fuse_conv_bn_eval(layers[i], layers[i + 1])
                    block[i + 1] = nn.Identity()
    return module


def inference_copy(module: "UNet | Ensemble", channels_last: bool = True) -> "UNet | Ensemble":
    """A frozen copy for prediction: eval mode, batch norm folded, optionally channels-last weights.

    The fast CPU path (``PredictOptions.fast``): on this project's 2-core AVX2
    machine oneDNN runs channels-last convolutions about twice as fast as NCHW
    (``benchmarks/speed.py`` measures it). The copy keeps ``cfg`` and geometry,
    so tiling treats it like the original; inputs should be channels-last too.
    """
    import copy

    fast = copy.deepcopy(module).eval()
    fold_batchnorm(fast)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last) if channels_last else fast


class Ensemble(nn.Module):
    """``cfg.members`` U-Nets of one shape: the mean of their probabilities, returned as logits.

    Averaging probabilities (not logits) is the usual ensemble; returning
    ``log(mean softmax)`` (``logit(mean sigmoid)`` for one channel) keeps the
    interface of :class:`UNet`, so tiling, TTA, the fast path and export treat
    an ensemble like one network: softmax/sigmoid of the output gives the mean.
    Geometry is the members' (they share ``cfg``).
    """

    def __init__(self, cfg: ModelConfig, members: list[UNet] | None = None) -> None:
        super().__init__()
        self.cfg = dataclasses.replace(cfg, members=len(members)) if members else cfg
        self.members = nn.ModuleList(members or (UNet(cfg) for _ in range(cfg.members)))

    def subset(self, indices: list[int]) -> "UNet | Ensemble":
        """The members at ``indices`` as one network, sharing their weights (one member: that U-Net);
        how an out-of-fold ensemble predicts each fold with only the members that never trained on it."""
        chosen = [self.members[i] for i in indices]
        return chosen[0] if len(chosen) == 1 else Ensemble(self.cfg, chosen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [m(x) for m in self.members]
        if self.cfg.out_channels == 1:
            return torch.logit(torch.stack([torch.sigmoid(z) for z in logits]).mean(0), eps=1e-7)
        return torch.log(torch.stack([torch.softmax(z, 1) for z in logits]).mean(0).clamp_min(1e-12))

    # geometry: every member's
    def output_size(self, n: int) -> int:
        return self.members[0].output_size(n)

    def output_shape(self, hw: tuple[int, int]) -> tuple[int, int]:
        return self.members[0].output_shape(hw)

    def valid_input_size(self, n: int) -> int:
        return self.members[0].valid_input_size(n)

    @property
    def margin(self) -> int:
        return self.members[0].margin

    @property
    def geometry(self) -> "NetGeometry":
        return self.members[0].geometry


def build_model(cfg: ModelConfig) -> UNet | Ensemble:
    """Registry entry point: a config rebuilds any checkpoint's network (an :class:`Ensemble` if ``members > 1``)."""
    return Ensemble(cfg) if cfg.members > 1 else UNet(cfg)
