"""The library version (read by caches and files, which must not reuse results across versions)."""
__version__ = "0.2.0"
