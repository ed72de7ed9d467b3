"""biounet: U-Net segmentation for microscopy and EM images.

    >>> import biounet
    >>> m = biounet.load_model("isbi2012-membrane")   # or a run folder
    >>> probs = m.predict(image)                        # float32, same H x W as the image
    >>> mask = m.segment(image)                         # mask (uint8, 255) or instance labels

Attributes are imported lazily so that ``import biounet`` (and ``biounet --help``) stays fast.
"""
__version__ = "0.1.0"
__all__ = ["load_model", "Segmenter", "__version__"]


def __getattr__(name: str):
    if name in ("load_model", "Segmenter"):
        from . import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'biounet' has no attribute {name!r}")
