"""The package version, recorded in every sidecar and free of any import."""

__version__ = "0.5.2"
