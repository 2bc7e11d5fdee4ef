"""lss_cli: LSS self-distillation of image CLIP into video models in language concept spaces.

Importing this package is cheap: torch, open_clip and torchcodec are imported by the modules that
need them, never here, so `lss --help` stays instant.
"""

__version__ = "0.1.0"
