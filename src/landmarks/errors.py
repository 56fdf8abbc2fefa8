"""User-facing errors: the CLI prints their message as one sentence and exits non-zero."""


class LandmarksError(Exception):
    """A mistake the user can fix (missing folder, bad CSV, unknown preset, ...)."""


class DataError(LandmarksError):
    """The data on disk is missing or not in an expected layout."""


class ImageError(LandmarksError):
    """A file is missing, truncated or not an image."""


class ConfigError(LandmarksError):
    """An unknown preset, key or value in the configuration."""
