"""SE4Lip speech-lip encoder features for talking-head renderers."""

__version__ = "0.2.0"  # before the imports: extract.py records it in every sidecar

from .extract import Extractor, load
from .stream import StreamingExtractor
from .weights import available_models

__all__ = ["Extractor", "StreamingExtractor", "__version__", "available_models", "load"]
