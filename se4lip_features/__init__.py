"""SE4Lip speech-lip encoder features for talking-head renderers."""

from .audio import AudioError, load_audio
from .extract import Extractor, extract_file, load
from .sidecar import read_features, read_sidecar
from .stream import StreamingExtractor
from .version import __version__
from .weights import available_models

__all__ = ["AudioError", "Extractor", "StreamingExtractor", "__version__", "available_models", "extract_file",
           "load", "load_audio", "read_features", "read_sidecar"]
