"""SE4Lip speech-lip encoder features for talking-head renderers.

The public API is imported on first use (``se4lip_features.load`` imports torch then), so that the parts that
need no torch (``se4lip_features.tool``, the renderer adapters' patcher) start without it.
"""

from __future__ import annotations

import importlib

from .version import __version__

_API = {"AudioError": "audio", "load_audio": "audio", "Extractor": "extract", "extract_file": "extract",
        "load": "extract", "read_features": "sidecar", "read_sidecar": "sidecar",
        "StreamingExtractor": "stream", "available_models": "weights"}

__all__ = ["AudioError", "Extractor", "StreamingExtractor", "__version__", "available_models", "extract_file",
           "load", "load_audio", "read_features", "read_sidecar"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value  # imported once
        return value
    try:  # a submodule used as an attribute (se4lip_features.audio) after `import se4lip_features`
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
