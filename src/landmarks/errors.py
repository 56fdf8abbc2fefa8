"""User-facing errors: the CLI prints their message as one sentence and exits non-zero."""


class LandmarksError(Exception):
    """A mistake the user can fix (missing folder, bad CSV, unknown preset, ...)."""


class DataError(LandmarksError):
    """The data on disk is missing or not in an expected layout."""


class ImageError(LandmarksError):
    """A file is missing, truncated or not an image; ``kind`` says which (missing, not_image, corrupt, too_large)."""

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


class ConfigError(LandmarksError):
    """An unknown preset, key or value in the configuration."""
