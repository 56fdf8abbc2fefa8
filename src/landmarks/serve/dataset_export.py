"""`landmarks feedback export`: what the service approved, as a dataset that `landmarks train --data` reads.

The dataset is in the GLDv2 layout: ``train.csv`` (id,landmark_id[,path]), ``train/a/b/c/<id>.jpg`` written from the
photos kept in the store, and ``landmarks.csv`` (landmark_id,name). With ``base`` (the data the run was trained on)
the base photos are listed in the same ``train.csv`` by their absolute ``path`` (not copied), minus the trained photos
the service removed, with the photos it moved under their new landmark: one dataset, so a retrained run knows the
taught landmarks in its classifier too.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from landmarks.data.catalog import read_catalog
from landmarks.errors import LandmarksError
from landmarks.store import STORE_FILE, Store
from landmarks.utils import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    out_dir: Path
    photos_written: int  # approved photos written under train/
    base_photos: int  # photos listed from --base
    removed_from_base: int  # base photos the service removed (or moved away from their landmark)
    without_photo: int  # approved references whose photo was not kept (enrolled before photos were stored)
    landmarks: int  # landmarks in train.csv


def _photo_id(image_id: str) -> str:
    """A GLDv2-style id (at least 3 characters, no separator) from a reference id such as photo-<sha1>."""
    tail = image_id.rsplit("-", 1)[-1]
    return tail if len(tail) >= 3 and tail.isalnum() else "".join(c for c in image_id if c.isalnum()).ljust(3, "0")


def _as_jpeg(photo: bytes) -> bytes:
    if photo[:3] == b"\xff\xd8\xff":
        return photo
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(photo)) as image:
        image.convert("RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _run_names(run_dir: Path) -> dict[int, str]:
    labels = run_dir / "labels.csv"
    if not labels.exists():
        return {}
    frame = pd.read_csv(labels, keep_default_na=False)
    return {int(i): str(n) for i, n in zip(frame["landmark_id"], frame["name"])}


def export_feedback(run_dir: Path, out_dir: Path, base: Path | None = None) -> ExportReport:
    """Write the approved contributions of ``run_dir`` (merged with ``base`` when given) into ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / STORE_FILE).exists() and not (run_dir / "feedback.sqlite").exists():
        raise LandmarksError(f"{run_dir} has no store ({STORE_FILE}): the service has approved nothing there yet.")
    if (out_dir / "train.csv").exists():
        raise LandmarksError(f"{out_dir} already holds a dataset (train.csv); choose an empty folder.")
    store = Store.open(run_dir)
    changes = store.reference_changes()
    names = {**_run_names(run_dir)}
    rows: list[dict] = []
    base_paths: dict[str, str] = {}
    removed_from_base = 0
    if base is not None:
        catalog = read_catalog(base)
        names.update(catalog.names)
        frame = catalog.frame[catalog.frame["landmark_id"] >= 0]
        base_paths = dict(zip(frame["id"], frame["path"]))
        for image_id, landmark_id, path in zip(frame["id"], frame["landmark_id"].tolist(), frame["path"]):
            if (image_id, landmark_id) in changes.removed or landmark_id in changes.deleted:
                removed_from_base += 1
                continue
            rows.append({"id": image_id, "landmark_id": landmark_id, "path": path})
    base_rows = len(rows)
    names.update(changes.enrolled)
    written = without_photo = 0
    seen = {(r["id"], r["landmark_id"]) for r in rows}
    for reference in store.added_references():
        photo = store.reference_photo(reference.image_id, reference.landmark_id) if reference.has_photo else None
        if photo is None:
            if reference.image_id in base_paths and (reference.image_id, reference.landmark_id) not in seen:
                rows.append({"id": reference.image_id, "landmark_id": reference.landmark_id,
                             "path": base_paths[reference.image_id]})  # a trained photo moved to another landmark
                seen.add((reference.image_id, reference.landmark_id))
            else:
                without_photo += 1
            continue
        photo_id = _photo_id(reference.image_id)
        relative = f"train/{photo_id[0]}/{photo_id[1]}/{photo_id[2]}/{photo_id}.jpg"
        if (photo_id, reference.landmark_id) in seen:
            continue
        atomic_write_bytes(out_dir / relative, _as_jpeg(photo))
        rows.append({"id": photo_id, "landmark_id": reference.landmark_id, "path": str((out_dir / relative).resolve())})
        seen.add((photo_id, reference.landmark_id))
        written += 1
    if not rows:
        raise LandmarksError(f"{run_dir}'s store has no approved photo to export" + ("." if base else " (give --base DATA to merge)."))
    table = pd.DataFrame(rows, columns=["id", "landmark_id", "path"])
    if base is None:
        table = table[["id", "landmark_id"]]  # the photos lie at train/a/b/c/<id>.jpg: GLDv2 as it is
    landmark_ids = sorted(int(i) for i in table["landmark_id"].unique())
    atomic_write_text(out_dir / "landmarks.csv", pd.DataFrame(
        {"landmark_id": landmark_ids, "name": [names.get(i, str(i)) for i in landmark_ids]}).to_csv(index=False))
    atomic_write_text(out_dir / "train.csv", table.to_csv(index=False))  # last: it vouches for the rest
    report = ExportReport(out_dir, written, base_rows, removed_from_base, without_photo, len(landmark_ids))
    log.info("exported %s", report)
    return report
