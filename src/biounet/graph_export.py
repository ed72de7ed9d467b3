"""The network as a graph file other runtimes load: ONNX (:func:`to_onnx`) and TorchScript (:func:`to_torchscript`).

Both trace the network with batch norm folded into the convolutions, in NCHW, optionally with the head's
activation inside (probabilities out), and carry :func:`model_metadata`, so the file describes itself.
``biounet export`` (:mod:`biounet.export`) writes them as files, :mod:`biounet.zoo` into bioimage.io
packages, and ``--backend onnxruntime`` (:class:`biounet.predict.OnnxRunner`) runs the ONNX graph.
"""
from __future__ import annotations

from pathlib import Path

from .io import InputError

ONNX_OPSET = 17


def _probabilities(module):
    """``module`` followed by its head's activation (sigmoid or softmax): outputs are probabilities."""
    import torch

    class Probabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module, softmax: bool) -> None:
            super().__init__()
            self.net, self.softmax = net, softmax

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net(x)
            return torch.softmax(y, dim=1) if self.softmax else torch.sigmoid(y)

    return Probabilities(module, module.cfg.out_channels > 1).eval()


def _export_net(module, probabilities: bool):
    """What the exports trace: the network with batch norm folded, NCHW, optionally its activation after it."""
    from .models.unet import inference_copy

    net = inference_copy(module, channels_last=False)
    return _probabilities(net) if probabilities else net


def _example_input(module):
    import torch

    cfg = module.cfg
    side = module.valid_input_size(4 * cfg.pool_size**cfg.depth)
    return torch.zeros(1, cfg.in_channels, side, side)


def to_onnx(module, probabilities: bool = False, metadata: dict[str, str] | None = None) -> bytes:
    """A U-Net as ONNX bytes with dynamic batch, height and width.

    Input ``image`` (N, C, H, W) float32, normalized as ``config.json`` says;
    for ``same`` nets H and W must be multiples of ``pool_size ** depth`` (16 for
    the shipped models; :class:`biounet.predict.OnnxRunner` pads other sizes),
    for ``valid`` nets valid input sizes. Output ``logits`` or, with
    ``probabilities``, ``probabilities`` (sigmoid / softmax applied). Batch norm
    is folded into the convolutions first. ``metadata`` goes into the model's
    metadata_props, so the file describes itself.
    """
    import io
    import warnings

    import torch

    try:  # torch's exporter needs it, and fails deep inside without it
        import onnx
    except ImportError as exc:
        raise InputError(f"ONNX export needs the onnx package: pip install 'biounet[onnx]' ({exc})") from None
    net = _export_net(module, probabilities)
    out_name = "probabilities" if probabilities else "logits"
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(net, _example_input(module), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=[out_name],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        out_name: {0: "batch", 2: "height", 3: "width"}})
    data = buf.getvalue()
    if metadata:
        model = onnx.load_from_string(data)
        for k, v in metadata.items():
            model.metadata_props.add(key=k, value=v)
        data = model.SerializeToString()
    return data


def to_torchscript(module, probabilities: bool = True, metadata: dict[str, str] | None = None) -> bytes:
    """A U-Net traced to TorchScript bytes (``torch.jit.load`` reads it); metadata as extra files.

    Same input contract as :func:`to_onnx`; traced on a multiple-of-alignment
    input, so the graph runs any such size.
    """
    import io
    import warnings

    import torch

    net = _export_net(module, probabilities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, _example_input(module), check_trace=False)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, which CPU users lack
        torch.jit.save(traced, buf, _extra_files=dict(metadata or {}))
    return buf.getvalue()


def model_metadata(model_dir: Path) -> dict[str, str]:
    """What a user of the exported file needs from the model folder, as strings."""
    import json

    from . import checkpoint
    from .config import to_dict

    cfg = checkpoint.load_config(model_dir)
    post = checkpoint.load_post(model_dir, cfg.post)
    align = cfg.model.pool_size**cfg.model.depth
    return {
        "biounet.name": cfg.name,
        "biounet.task": cfg.task,
        "biounet.normalize": cfg.data.normalize,
        "biounet.input": (f"(N, {cfg.model.in_channels}, H, W) float32, each image normalized by "
                          f"biounet.normalize '{cfg.data.normalize}'; H and W multiples of {align}"
                          if cfg.model.padding == "same" else "valid-padding net: see biounet.config"),
        "biounet.output": (f"(N, {cfg.model.out_channels}, H, W) "
                           + ("softmax probabilities" if cfg.model.out_channels > 1 else "sigmoid probability")),
        "biounet.config": json.dumps(checkpoint.config_dict(cfg)),
        "biounet.thresholds": json.dumps(to_dict(post)),
    }
