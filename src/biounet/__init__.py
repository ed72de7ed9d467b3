"""biounet: U-Net segmentation for microscopy and EM images."""
__version__ = "0.1.0"
