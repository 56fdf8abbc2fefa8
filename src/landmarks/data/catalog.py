"""Catalogs: which photo shows which landmark, read from a GLDv2/Kaggle folder or from class folders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from landmarks.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Catalog:
    """Photos with their landmark: ``frame`` has columns id, path (absolute), landmark_id (-1 = no landmark)."""

    frame: pd.DataFrame
    names: dict[int, str] = field(default_factory=dict)
    root: Path = Path(".")

    def name_of(self, landmark_id: int) -> str:
        return self.names.get(int(landmark_id), str(landmark_id))


def _read_csv(path: Path, required: tuple[str, ...], dtypes: dict[str, object]) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not a readable CSV file ({error}).") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path} must have the columns {','.join(required)} but has {','.join(header) or 'none'} "
            f"(missing {','.join(missing)})."
        )
    usecols = [c for c in header if c in dtypes]
    try:
        return pd.read_csv(path, usecols=usecols, dtype={c: dtypes[c] for c in usecols}, keep_default_na=False,
                           engine="c")
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{path} has a malformed row or a non-integer landmark_id ({error}).") from None


def _gldv2_paths(root: Path, split: str, ids: pd.Series) -> pd.Series:
    """``root/split/a/b/c/<id>.jpg``, built column-wise (fast on millions of rows)."""
    base = str(root.resolve() / split) + "/"
    return base + ids.str[0] + "/" + ids.str[1] + "/" + ids.str[2] + "/" + ids + ".jpg"


def _read_names(root: Path) -> dict[int, str]:
    path = root / "landmarks.csv"
    if not path.exists():
        return {}
    frame = _read_csv(path, ("landmark_id", "name"), {"landmark_id": "int64", "name": str})
    return dict(zip(frame["landmark_id"].tolist(), frame["name"].tolist()))


def _read_gldv2(root: Path, split: str) -> Catalog:
    names = _read_names(root)
    if split == "train":
        frame = _read_csv(root / "train.csv", ("id", "landmark_id"), {"id": str, "landmark_id": "int64", "path": str})
    else:
        csv = root / f"{split}.csv"
        if not csv.exists():
            raise DataError(f"{root} has no {split}.csv.")
        frame = _read_csv(csv, ("id",), {"id": str, "path": str})
        frame["landmark_id"] = _read_solution(root, frame["id"])
    if "path" in frame.columns:
        paths = frame["path"]
        relative = ~paths.str.startswith("/")
        paths = paths.where(~relative, str(root.resolve()) + "/" + paths)
    else:
        paths = _gldv2_paths(root, split, frame["id"])
    frame = pd.DataFrame({"id": frame["id"], "path": paths, "landmark_id": frame["landmark_id"].astype(np.int64)})
    if frame.empty:
        raise DataError(f"{root / (split + '.csv')} lists no photos.")
    return Catalog(frame, names, root)


def _read_solution(root: Path, ids: pd.Series) -> np.ndarray:
    """Ground truth from ``*_solution.csv`` (first landmark id of each row; empty = -1); all -1 without one."""
    solutions = sorted(root.glob("*_solution.csv"))
    truth = np.full(len(ids), -1, dtype=np.int64)
    if not solutions:
        return truth
    solution = _read_csv(solutions[0], ("id", "landmarks"), {"id": str, "landmarks": str})
    first = solution["landmarks"].str.strip().str.split(" ").str[0]
    values = pd.to_numeric(first.where(first != "", None), errors="coerce").fillna(-1).astype(np.int64)
    lookup = pd.Series(values.to_numpy(), index=solution["id"])
    return ids.map(lookup).fillna(-1).astype(np.int64).to_numpy()


def _read_folders(root: Path, split: str) -> Catalog:
    if split != "train":
        raise DataError(f"{root} is a folder of class folders, which has only training photos (no {split}.csv).")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = []
    for landmark_id, folder in enumerate(classes):
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                rows.append((f"{folder.name}/{path.relative_to(folder).with_suffix('')}", str(path.resolve()), landmark_id))
    if not rows:
        raise DataError(f"{root} has neither a train.csv nor class folders with photos (DIR/<landmark name>/*.jpg).")
    frame = pd.DataFrame(rows, columns=["id", "path", "landmark_id"]).astype({"landmark_id": np.int64})
    return Catalog(frame, {i: folder.name for i, folder in enumerate(classes)}, root)


def read_catalog(data_dir: str | Path, split: str = "train") -> Catalog:
    """The photos of a split: GLDv2/Kaggle layout when ``train.csv`` exists, class folders otherwise."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"Folder {root} does not exist.")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    if (root / "train.csv").exists() or (split != "train" and (root / f"{split}.csv").exists()):
        return _read_gldv2(root, split)
    return _read_folders(root, split)


def write_catalog(frame: pd.DataFrame, names: dict[int, str], out_dir: str | Path) -> Path:
    """A dataset that ``read_catalog`` reads back: train.csv with absolute paths (no image copied) and landmarks.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame[["id", "landmark_id", "path"]].to_csv(out / "train.csv", index=False)
    ids = sorted(frame["landmark_id"].unique())
    pd.DataFrame({"landmark_id": ids, "name": [names.get(int(i), str(i)) for i in ids]}).to_csv(
        out / "landmarks.csv", index=False
    )
    return out
