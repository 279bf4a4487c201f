"""SE4Lip speech-lip encoder features for talking-head renderers."""
__version__ = "0.1.0"
