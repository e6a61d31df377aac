"""The package version: one place, read by the package, its exports and the build (pyproject.toml)."""

__version__ = "0.1.0"
