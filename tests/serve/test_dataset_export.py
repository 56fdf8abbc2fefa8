"""`landmarks feedback export`: approved photos as a GLDv2-layout dataset, merged with the training data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from landmarks.cli import main
from landmarks.data.catalog import read_catalog
from landmarks.serve.admin import create_token
from landmarks.serve.app import create_app
from landmarks.serve.settings import Settings
from tests_helpers import PURPLE, bearer, photo_files


def test_export_merges_approved_photos_with_the_base_minus_what_was_removed(run: Path, tiny_run_dir: Path, tmp_path: Path, capsys):
    base = tiny_run_dir.parent / "gld"
    admin, contributor = create_token(run, "admin")[1], create_token(run, "contributor")[1]
    with TestClient(create_app(run, backend="torch", settings=Settings(max_pending_per_client=0))) as client:
        enrolled = client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 3),
                               headers=bearer(admin)).json()
        suggested = client.post("/landmarks", data={"name": "Rejected Rock"}, files=photo_files((0, 0, 0), 2),
                                headers=bearer(contributor)).json()
        client.post(f"/suggestions/{suggested['suggestion_ids'][0]}/reject", headers=bearer(admin))  # the other stays pending
        index = client.app.state.service.recognizer.index
        trained = [i for i, l in zip(index.image_ids, index.landmark_ids) if l == 300]
        client.delete(f"/references/{trained[0]}", headers=bearer(admin))
        client.put(f"/references/{trained[1]}", json={"landmark_id": 7}, headers=bearer(admin))
    out = tmp_path / "export"
    assert main(["feedback", "export", str(run), "--out", str(out), "--base", str(base)]) == 0
    assert "wrote 3 approved photos beside 46 from" in capsys.readouterr().out
    catalog = read_catalog(out)
    frame = catalog.frame
    assert len(frame) == 48 - 2 + 1 + 3  # base, minus the removed and the moved photo, plus it moved, plus the new ones
    assert catalog.names[enrolled["landmark_id"]] == "Purple Palace" and catalog.names[300] == "place_300"
    new = frame[frame["landmark_id"] == enrolled["landmark_id"]]
    assert len(new) == 3 and all(Path(p).is_file() and Path(p).read_bytes()[:2] == b"\xff\xd8" for p in new["path"])
    assert {Path(p).relative_to(out.resolve()).parts[0] for p in new["path"]} == {"train"}
    pairs = set(zip(frame["id"], frame["landmark_id"]))
    assert (trained[0], 300) not in pairs and (trained[1], 300) not in pairs and (trained[1], 7) in pairs
    assert "Rejected Rock" not in catalog.names.values()  # rejected and pending suggestions stay out
    assert main(["feedback", "export", str(run), "--out", str(out)]) == 2  # never over an existing dataset


def test_export_without_base_is_plain_gldv2(run: Path, tmp_path: Path):
    with TestClient(create_app(run, backend="torch", settings=Settings(open=True))) as client:
        client.post("/landmarks", data={"name": "Purple Palace"}, files=photo_files(PURPLE, 2))
    out = tmp_path / "export"
    assert main(["feedback", "export", str(run), "--out", str(out)]) == 0
    assert pd.read_csv(out / "train.csv").columns.tolist() == ["id", "landmark_id"]
    catalog = read_catalog(out)
    assert len(catalog.frame) == 2 and all(Path(p).is_file() for p in catalog.frame["path"])
    assert main(["feedback", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
