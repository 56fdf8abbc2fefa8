"""Catalogs: which photo shows which landmark, read from a GLDv2/Kaggle folder or from class folders."""

from __future__ import annotations

import logging
import os
from urllib.parse import unquote
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from landmarks.errors import DataError
from landmarks.utils import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # photos read from folders
NO_LANDMARK = -1  # the landmark id of a photo that shows no (known) landmark
NO_LANDMARK_NAME = "no known landmark"  # how such a photo or answer is shown to a person
INFO_COLUMNS = ("latitude", "longitude", "url", "description")  # optional columns of landmarks.csv (WGS84 degrees)


@dataclass
class Catalog:
    """Photos with their landmark: ``frame`` has columns id, path (absolute), landmark_id (int64, -1 = none/unknown).

    ``info``: what landmarks.csv says of a landmark beyond its name (``INFO_COLUMNS``, only the values it has)."""

    frame: pd.DataFrame
    names: dict[int, str] = field(default_factory=dict)
    root: Path = Path(".")
    info: dict[int, dict[str, float | str]] = field(default_factory=dict)

    def name_of(self, landmark_id: int) -> str:
        """The landmark's name from landmarks.csv (or its folder), else the id as text."""
        return self.names.get(int(landmark_id)) or str(int(landmark_id))


def _read_csv(path: Path, required: tuple[str, ...], dtypes: dict[str, object]) -> pd.DataFrame:
    """Read the columns of ``dtypes`` that the file has (``required`` must be there), fast and typed."""
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise DataError(f"{path} is not a readable CSV file ({error}).") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path} must have the columns {','.join(required)} but has {','.join(header) or 'none'} "
            f"(missing {','.join(missing)})."
        )
    usecols = [c for c in header if c in dtypes]
    try:
        frame = pd.read_csv(
            path, usecols=usecols, dtype={c: dtypes[c] for c in usecols}, keep_default_na=False, engine="c"
        )
    except (ValueError, TypeError, OverflowError) as error:
        raise DataError(f"{path} has a non-integer landmark_id or a malformed row ({error}).") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path} has a malformed row ({error}).") from None
    return frame


def _gldv2_paths(root: Path, split: str, ids: pd.Series) -> list[str]:
    """``root/split/a/b/c/<id>.jpg`` for every id.

    A list comprehension over the ids is ~10x faster here than pandas' ``.str`` arithmetic on a
    python-backed string column (0.6 s against 6.8 s for 4.1M ids, benchmarks/bench_catalog.py).
    """
    base = f"{root.resolve() / split}/"
    try:
        return [f"{base}{i[0]}/{i[1]}/{i[2]}/{i}.jpg" for i in ids.to_numpy(dtype=object)]
    except IndexError:
        short = next(i for i in ids.to_numpy(dtype=object) if len(i) < 3)
        raise DataError(
            f"{root / (split + '.csv')} has the id {short!r}, too short for the {split}/a/b/c/<id>.jpg layout "
            f"(give a path column instead)."
        ) from None


def _given_paths(root: Path, paths: pd.Series) -> list[str]:
    """A ``path`` column: absolute paths stay, relative ones are taken from ``root``."""
    base = f"{root.resolve()}{os.sep}"
    return [p if os.path.isabs(p) else base + p for p in paths.to_numpy(dtype=object)]


def _category_name(url: str) -> str:
    """``http://commons.wikimedia.org/wiki/Category:Haleakala_National_Park`` -> ``Haleakala National Park``."""
    return unquote(url.rstrip("/").rsplit("/", 1)[-1].split("Category:", 1)[-1]).replace("_", " ")


def _read_landmarks(root: Path) -> tuple[dict[int, str], dict[int, dict[str, float | str]]]:
    """Names and info of the landmarks: ``landmarks.csv`` (landmark_id, name[, latitude, longitude, url,
    description]) and GLDv2's ``train_label_to_category.csv`` (landmark_id, category: a Wikimedia Commons category
    URL, which becomes the url, and the name where landmarks.csv has none)."""
    names: dict[int, str] = {}
    info: dict[int, dict[str, float | str]] = {}
    categories = root / "train_label_to_category.csv"
    if categories.is_file():
        frame = _read_csv(categories, ("landmark_id", "category"), {"landmark_id": "int64", "category": str})
        for landmark_id, url in zip(frame["landmark_id"].tolist(), frame["category"].tolist()):
            if url:
                names[landmark_id] = _category_name(url)
                info[landmark_id] = {"url": url}
    path = root / "landmarks.csv"
    if not path.is_file():
        return names, info
    frame = _read_csv(path, ("landmark_id", "name"), {"landmark_id": "int64", "name": str, **{c: str for c in INFO_COLUMNS}})
    names.update((i, n) for i, n in zip(frame["landmark_id"].tolist(), frame["name"].tolist()) if n)
    for row in frame.itertuples(index=False):
        values = {c: getattr(row, c) for c in INFO_COLUMNS if c in frame.columns and getattr(row, c).strip()}
        for axis, limit in (("latitude", 90.0), ("longitude", 180.0)):
            if axis in values:
                try:
                    values[axis] = float(values[axis])
                except ValueError:
                    raise DataError(f"{path} has a {axis} that is not a number for landmark {row.landmark_id}: "
                                    f"{values[axis]!r}.") from None
                if not -limit <= values[axis] <= limit:
                    raise DataError(f"{path} has {axis} {values[axis]} for landmark {row.landmark_id}, outside "
                                    f"[-{limit:g}, {limit:g}].")
        if ("latitude" in values) != ("longitude" in values):
            values.pop("latitude", None), values.pop("longitude", None)
        if values:
            info.setdefault(row.landmark_id, {}).update(values)
    return names, info


def _read_solution(root: Path, split: str, ids: pd.Series) -> np.ndarray:
    """Ground truth of a test split from ``*_solution.csv``: the first landmark id of a row, -1 when empty or absent."""
    truth = np.full(len(ids), NO_LANDMARK, dtype=np.int64)
    preferred = root / f"{split}_solution.csv"
    solutions = [preferred] if preferred.is_file() else sorted(root.glob("*_solution.csv"))
    if not solutions:
        log.info("%s has no *_solution.csv: every %s photo's landmark is unknown (-1)", root, split)
        return truth
    path = solutions[0]
    solution = _read_csv(path, ("id", "landmarks"), {"id": str, "landmarks": str})
    first = pd.Series([s.strip().split(" ", 1)[0] for s in solution["landmarks"].to_numpy(dtype=object)], dtype=object)
    try:
        values = pd.to_numeric(first.replace("", str(NO_LANDMARK)), errors="raise").astype(np.int64)
    except (ValueError, TypeError):
        raise DataError(f"{path} has a non-integer landmark id in its landmarks column.") from None
    lookup = pd.Series(values.to_numpy(), index=solution["id"].to_numpy(dtype=object))
    lookup = lookup[~lookup.index.duplicated()]
    return ids.map(lookup).fillna(NO_LANDMARK).astype(np.int64).to_numpy()


def _read_gldv2(root: Path, split: str) -> Catalog:
    csv = root / f"{split}.csv"
    if not csv.is_file():
        raise DataError(f"{root} has no {split}.csv for the {split} split.")
    if split == "train":
        frame = _read_csv(csv, ("id", "landmark_id"), {"id": str, "landmark_id": "int64", "path": str})
    else:
        frame = _read_csv(csv, ("id",), {"id": str, "landmark_id": "int64", "path": str})
        if "landmark_id" not in frame.columns:
            frame["landmark_id"] = _read_solution(root, split, frame["id"])
    if frame.empty:
        raise DataError(f"{csv} lists no photos.")
    paths = _given_paths(root, frame["path"]) if "path" in frame.columns else _gldv2_paths(root, split, frame["id"])
    catalog_frame = pd.DataFrame(
        {"id": frame["id"], "path": pd.Series(paths, dtype=frame["id"].dtype), "landmark_id": frame["landmark_id"].astype(np.int64)}
    )
    names, info = _read_landmarks(root)
    return Catalog(catalog_frame, names, root, info)


def _unique_ids(stems: list[str]) -> list[str]:
    """File stems, with ``-2``, ``-3`` ... appended to the second, third ... photo of the same stem."""
    seen: dict[str, int] = {}
    unique = []
    for stem in stems:
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        unique.append(stem if count == 1 else f"{stem}-{count}")
    return unique


def _read_folders(root: Path, split: str) -> Catalog:
    if split != "train":
        raise DataError(f"{root} is a folder of class folders, which has only a train split (asked for {split!r}).")
    photos: list[tuple[str, list[Path]]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            photos.append((folder.name, files))
    if not photos:
        raise DataError(
            f"{root} has neither a train.csv nor class folders with photos "
            f"(DIR/<landmark name>/*.jpg, .jpeg, .png or .webp)."
        )
    paths = [str(p.resolve()) for _, files in photos for p in files]
    stems = [p.stem for _, files in photos for p in files]
    landmark_ids = np.repeat(np.arange(len(photos), dtype=np.int64), [len(files) for _, files in photos])
    frame = pd.DataFrame({"id": pd.Series(_unique_ids(stems), dtype=str), "path": pd.Series(paths, dtype=str),
                          "landmark_id": landmark_ids})
    return Catalog(frame, {i: name for i, (name, _) in enumerate(photos)}, root)


def read_catalog(data_dir: str | Path, split: str = "train") -> Catalog:
    """The photos of a split: GLDv2/Kaggle layout when ``train.csv`` exists, class folders otherwise.

    Images are not opened here (too slow for millions); a missing or broken image is reported when decoded.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"Folder {root} does not exist.")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    if (root / "train.csv").is_file() or (split != "train" and (root / f"{split}.csv").is_file()):
        catalog = _read_gldv2(root, split)
    else:
        catalog = _read_folders(root, split)
    log.info("read %d %s photos of %d landmarks from %s", len(catalog.frame), split,
             catalog.frame["landmark_id"][catalog.frame["landmark_id"] >= 0].nunique(), root)
    return catalog


def on_disk(catalog_frame: pd.DataFrame) -> np.ndarray:
    """Mask of the rows whose image file exists (GLDv2's train.csv lists all 500 shards; often few are downloaded)."""
    return np.fromiter((os.path.isfile(p) for p in catalog_frame["path"]), dtype=bool, count=len(catalog_frame))


def write_catalog(catalog_frame: pd.DataFrame, names: dict[int, str], out_dir: str | Path,
                  info: dict[int, dict[str, float | str]] | None = None) -> Path:
    """A dataset that ``read_catalog`` reads back: train.csv (id,landmark_id,path; absolute paths, no image copied)
    and landmarks.csv (landmark_id,name and the ``INFO_COLUMNS`` that ``info`` has)."""
    missing = [c for c in ("id", "landmark_id", "path") if c not in catalog_frame.columns]
    if missing:
        raise DataError(f"Cannot write a catalog without the columns {','.join(missing)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = catalog_frame[["id", "landmark_id", "path"]].copy()
    frame["path"] = [p if os.path.isabs(p) else os.path.abspath(p) for p in frame["path"].to_numpy(dtype=object)]
    ids = sorted(int(i) for i in frame["landmark_id"].unique() if i >= 0)
    landmarks = pd.DataFrame({"landmark_id": ids, "name": [names.get(i) or str(i) for i in ids]})
    for column in INFO_COLUMNS:
        if info and any(column in info.get(i, {}) for i in ids):
            landmarks[column] = [info.get(i, {}).get(column, "") for i in ids]
    for name, table in (("train.csv", frame), ("landmarks.csv", landmarks)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    return out


def info_from_table(table: pd.DataFrame) -> dict[int, dict[str, float | str]]:
    """The ``INFO_COLUMNS`` of a landmark_id table (a run's labels.csv), without empty values."""
    columns = [c for c in INFO_COLUMNS if c in table.columns]
    info: dict[int, dict[str, float | str]] = {}
    for row in table[["landmark_id", *columns]].itertuples(index=False):
        values = {c: getattr(row, c) for c in columns if not pd.isna(getattr(row, c)) and str(getattr(row, c)).strip()}
        values.update({c: float(values[c]) for c in ("latitude", "longitude") if c in values})
        if values:
            info[int(row.landmark_id)] = values
    return info


def non_landmark_photos(folder: str | Path, what: str = "data.non_landmarks") -> list[Path]:
    """The photos of a non-landmark bank folder (any depth), sorted; one sentence when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what}={folder} is not a folder of photos.")
    photos = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not photos:
        raise DataError(f"No photos ({', '.join(IMAGE_SUFFIXES)}) found in {what}={folder}.")
    return photos


def non_landmark_id(folder: str | Path, photo: str | Path) -> str:
    """The reference id of a bank photo: its path inside the bank folder, so that two IMG_0001.jpg in two
    sub-folders are two references."""
    return f"non-landmark:{Path(photo).relative_to(Path(folder)).as_posix()}"

