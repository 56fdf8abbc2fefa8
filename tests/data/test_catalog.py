from pathlib import Path

import pytest

from landmarks.data.catalog import read_catalog, write_catalog
from landmarks.errors import DataError
from tests_helpers import photo


def test_gldv2_layout_with_sparse_ids_names_and_solution(tiny_gldv2: Path):
    train = read_catalog(tiny_gldv2)
    assert len(train.frame) == 48 and sorted(train.frame["landmark_id"].unique()) == [7, 55, 300, 1042]
    first = train.frame.iloc[0]
    assert first["path"].endswith(f"train/{first['id'][0]}/{first['id'][1]}/{first['id'][2]}/{first['id']}.jpg")
    assert Path(first["path"]).exists() and train.name_of(1042) == "place_1042" and train.name_of(5) == "5"
    test = read_catalog(tiny_gldv2, "test")
    assert len(test.frame) == 8 and (test.frame["landmark_id"] == -1).sum() == 2


def test_class_folders(tmp_path: Path):
    for name in ("eiffel", "colosseum"):
        for i in range(3):
            photo(tmp_path / name / f"{i}.JPG")
    catalog = read_catalog(tmp_path)
    assert catalog.names == {0: "colosseum", 1: "eiffel"} and len(catalog.frame) == 6
    with pytest.raises(DataError, match="only training photos"):
        read_catalog(tmp_path, "test")


def test_write_catalog_round_trip_keeps_paths(tiny_gldv2: Path, tmp_path: Path):
    catalog = read_catalog(tiny_gldv2)
    out = write_catalog(catalog.frame.head(10), catalog.names, tmp_path / "sample")
    again = read_catalog(out)
    assert again.frame["path"].tolist() == catalog.frame["path"].head(10).tolist()
    assert again.name_of(int(again.frame["landmark_id"].iloc[0])).startswith("place_")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir() or (root / "train.csv").write_text("image,label\na,1\n"),
         "must have the columns id,landmark_id but has image,label"),
        (lambda root: root.mkdir() or (root / "train.csv").write_text("id,landmark_id\na,tower\n"), "non-integer landmark_id"),
        (lambda root: root.mkdir(), "neither a train.csv nor class folders"),
    ],
)
def test_errors_are_one_sentence(tmp_path: Path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        read_catalog(root)


def test_real_landmarks_mini(landmarks_data: Path):
    train = read_catalog(landmarks_data)
    assert len(train.frame) == 1427 and train.frame["landmark_id"].nunique() == 41
    test = read_catalog(landmarks_data, "test")
    assert len(test.frame) == 187 and (test.frame["landmark_id"] == -1).sum() == 88
