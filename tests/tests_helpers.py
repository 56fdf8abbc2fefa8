"""Small builders shared by tests (importable because tests/ is on sys.path under pytest's rootdir conftest)."""

from pathlib import Path

from conftest import make_photo


def photo(path: Path, colour: tuple[int, int, int] = (200, 100, 50), size: tuple[int, int] = (48, 40)) -> Path:
    return make_photo(path, colour, size)
