from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landmarks.data.catalog import Catalog, info_from_table, read_catalog, write_catalog
from landmarks.data.prepared import PreparedData, labels_table
from landmarks.errors import DataError
from tests_helpers import photo


def test_gldv2_layout_with_sparse_ids_and_names(tiny_gldv2: Path):
    train = read_catalog(tiny_gldv2)
    assert isinstance(train, Catalog) and train.root == tiny_gldv2
    assert list(train.frame.columns) == ["id", "path", "landmark_id"]
    assert train.frame["landmark_id"].dtype == np.int64
    assert len(train.frame) == 48 and sorted(train.frame["landmark_id"].unique()) == [7, 55, 300, 1042]
    for _, row in train.frame.iterrows():
        image_id = row["id"]
        assert row["path"] == str(tiny_gldv2.resolve() / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg")
        assert Path(row["path"]).is_file()
    assert train.name_of(1042) == "place_1042" and train.name_of(5) == "5" and train.name_of(np.int64(7)) == "place_7"


def test_ids_keep_leading_zeros_and_url_column_is_ignored(tmp_path: Path):
    (tmp_path / "train.csv").write_text("id,url,landmark_id\n0012ab,http://x/0012ab.jpg,3\n00e1ff,http://x/00e1ff.jpg,200000\n")
    frame = read_catalog(tmp_path).frame
    assert frame["id"].tolist() == ["0012ab", "00e1ff"] and frame["landmark_id"].tolist() == [3, 200000]
    assert frame["path"].iloc[0] == str(tmp_path.resolve() / "train/0/0/1/0012ab.jpg")
    assert read_catalog(tmp_path).names == {}  # no landmarks.csv


def test_path_column_absolute_or_relative_to_the_folder(tmp_path: Path):
    elsewhere = photo(tmp_path / "elsewhere" / "x.jpg")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(f"id,landmark_id,path\na,1,{elsewhere}\nb,2,pics/b.png\n")
    frame = read_catalog(data).frame
    assert frame["path"].tolist() == [str(elsewhere), str(data.resolve() / "pics" / "b.png")]


def test_test_split_reads_the_solution(tiny_gldv2: Path):
    test = read_catalog(tiny_gldv2, "test")
    assert len(test.frame) == 8 and (test.frame["landmark_id"] == -1).sum() == 2
    assert test.frame["path"].str.contains("/test/").all() and test.frame["landmark_id"].dtype == np.int64
    solution = pd.read_csv(tiny_gldv2 / "test_solution.csv", dtype=str, keep_default_na=False)
    expected = dict(zip(solution["id"], [int(x) if x else -1 for x in solution["landmarks"]]))
    assert dict(zip(test.frame["id"], test.frame["landmark_id"])) == expected


def test_solution_takes_the_first_of_several_landmarks_and_unknown_ids_are_minus_one(tmp_path: Path):
    (tmp_path / "train.csv").write_text("id,landmark_id\nt1,1\n")
    (tmp_path / "test.csv").write_text("id\nq001\nq002\nq003\nq004\n")
    (tmp_path / "retrieval_solution.csv").write_text(
        "id,landmarks,Usage\nq001,12 7 9,Public\nq002,,Private\nq003,5,Private\n"
    )
    frame = read_catalog(tmp_path, "test").frame
    assert frame["landmark_id"].tolist() == [12, -1, 5, -1]


def test_test_split_without_solution_is_all_unknown(tiny_gldv2: Path):
    (tiny_gldv2 / "test_solution.csv").unlink()
    test = read_catalog(tiny_gldv2, "test")
    assert len(test.frame) == 8 and (test.frame["landmark_id"] == -1).all()


def test_class_folders(tmp_path: Path):
    for name in ("eiffel", "colosseum"):
        for i in range(3):
            photo(tmp_path / name / f"{i}.JPG")
    photo(tmp_path / "eiffel" / "night.jpeg")
    (tmp_path / "eiffel" / "notes.txt").write_text("not a photo")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    photo(tmp_path / ".hidden" / "x.jpg")
    catalog = read_catalog(tmp_path)
    assert catalog.names == {0: "colosseum", 1: "eiffel"} and len(catalog.frame) == 7
    assert catalog.frame["landmark_id"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert catalog.frame["landmark_id"].dtype == np.int64
    assert catalog.frame["id"].tolist() == ["0", "1", "2", "0-2", "1-2", "2-2", "night"]  # stems, made unique
    assert catalog.frame["path"].iloc[-1] == str((tmp_path / "eiffel" / "night.jpeg").resolve())
    assert catalog.name_of(1) == "eiffel"
    with pytest.raises(DataError, match="only a train split"):
        read_catalog(tmp_path, "test")


def test_write_catalog_round_trip_keeps_paths_and_names(tiny_gldv2: Path, tmp_path: Path):
    catalog = read_catalog(tiny_gldv2)
    head = catalog.frame.head(10)
    out = write_catalog(head, catalog.names, tmp_path / "sample")
    assert out == tmp_path / "sample"
    assert pd.read_csv(out / "train.csv").columns.tolist() == ["id", "landmark_id", "path"]
    again = read_catalog(out)
    pd.testing.assert_frame_equal(again.frame, head.reset_index(drop=True))
    assert again.names == {int(i): f"place_{i}" for i in head["landmark_id"].unique()}


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("a file"), "is not a folder"),
        (lambda root: root.mkdir() or (root / "train.csv").write_text("image,label\na,1\n"),
         "must have the columns id,landmark_id but has image,label"),
        (lambda root: root.mkdir() or (root / "train.csv").write_text("id,landmark_id\na,tower\n"), "non-integer landmark_id"),
        (lambda root: root.mkdir() or (root / "train.csv").write_text("id,landmark_id\na,\n"), "non-integer landmark_id"),
        (lambda root: root.mkdir() or (root / "train.csv").write_text("id,landmark_id\n"), "lists no photos"),
        (lambda root: root.mkdir(), "neither a train.csv nor class folders"),
    ],
)
def test_errors_are_one_sentence(tmp_path: Path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message) as error:
        read_catalog(root)
    assert str(root) in str(error.value) and len(str(error.value).splitlines()) == 1


def test_ids_too_short_for_the_folder_layout(tmp_path: Path):
    (tmp_path / "train.csv").write_text("id,landmark_id\nabcd,1\nab,2\n")
    with pytest.raises(DataError, match="has the id 'ab', too short"):
        read_catalog(tmp_path)


def test_test_csv_without_id_column(tiny_gldv2: Path):
    (tiny_gldv2 / "test.csv").write_text("image\nq1\n")
    with pytest.raises(DataError, match="must have the columns id but has image"):
        read_catalog(tiny_gldv2, "test")


def test_real_landmarks_mini(landmarks_data: Path):
    train = read_catalog(landmarks_data)
    assert len(train.frame) == 1427 and train.frame["landmark_id"].nunique() == 41
    assert Path(train.frame["path"].iloc[0]).is_file() and len(train.names) >= 41
    test = read_catalog(landmarks_data, "test")
    assert len(test.frame) == 187 and (test.frame["landmark_id"] == -1).sum() == 88


def test_landmark_info_travels_from_landmarks_csv_to_the_run(tmp_path: Path):
    (tmp_path / "train.csv").write_text("id,landmark_id\nabc1,3\nabc2,5\nabc3,9\n")
    (tmp_path / "landmarks.csv").write_text(
        "landmark_id,name,latitude,longitude,url,description\n"
        "3,Qutb Minar,28.5245,77.1855,https://en.wikipedia.org/wiki/Qutb_Minar,\"A minaret, 73 m\"\n"
        "5,Somewhere,,,,\n"
        "9,Half,12.5,,https://x.org/half,\n")
    catalog = read_catalog(tmp_path)
    assert catalog.info[3] == {"latitude": 28.5245, "longitude": 77.1855, "url": "https://en.wikipedia.org/wiki/Qutb_Minar",
                               "description": "A minaret, 73 m"}
    assert 5 not in catalog.info and catalog.info[9] == {"url": "https://x.org/half"}  # a lone latitude is dropped
    data = PreparedData(catalog.frame.assign(class_index=[0, 1, 2]), catalog.names, np.array([3, 5, 9]), None, catalog.info)
    labels = labels_table(data)
    assert list(labels.columns) == ["class_index", "landmark_id", "name", "latitude", "longitude", "url", "description"]
    assert info_from_table(labels) == catalog.info
    copy = write_catalog(catalog.frame, catalog.names, tmp_path / "copy", catalog.info)
    assert read_catalog(copy).info == catalog.info


@pytest.mark.parametrize("value, message", [("north", "not a number"), ("91", r"outside \[-90, 90\]")])
def test_bad_coordinates_are_one_sentence(tmp_path: Path, value: str, message: str):
    (tmp_path / "train.csv").write_text("id,landmark_id\nabc1,3\n")
    (tmp_path / "landmarks.csv").write_text(f"landmark_id,name,latitude,longitude\n3,X,{value},10\n")
    with pytest.raises(DataError, match=message):
        read_catalog(tmp_path)


def test_gldv2_categories_give_names_and_urls(tmp_path: Path):
    (tmp_path / "train.csv").write_text("id,landmark_id\nabc1,3\nabc2,4\n")
    (tmp_path / "train_label_to_category.csv").write_text(
        "landmark_id,category\n3,http://commons.wikimedia.org/wiki/Category:Haleakal%C4%81_National_Park\n"
        "4,http://commons.wikimedia.org/wiki/Category:Tower_Bridge\n")
    (tmp_path / "landmarks.csv").write_text("landmark_id,name\n4,London's Tower Bridge\n")
    catalog = read_catalog(tmp_path)
    assert catalog.name_of(3) == "Haleakalā National Park" and catalog.name_of(4) == "London's Tower Bridge"
    assert catalog.info[4] == {"url": "http://commons.wikimedia.org/wiki/Category:Tower_Bridge"}
