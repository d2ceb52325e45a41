"""nydus-exporter: build Nydus (RAFS v6) images from container layers."""

__version__ = "0.1.0"
