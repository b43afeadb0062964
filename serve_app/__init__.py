"""Ray Serve service for the Chinese zero-shot mT5 model (classification and augmentation)."""

__version__ = "0.1.0"
