"""The geo prior: EXIF GPS, distances, the rule, and the Recognizer's stage (near, far, missing coordinates)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from landmarks.config import RecognizeConfig
from landmarks.recognize.geo import Location, geo_factor, haversine_km, read_exif_location
from landmarks.recognize.index import EmbeddingIndex
from landmarks.recognize.recognizer import Recognizer

QUTB_MINAR, ALAI_DARWAZA, TAJ_MAHAL = Location(28.5245, 77.1855), Location(28.5243, 77.1852), Location(27.1751, 78.0421)


def jpeg_with_gps(latitude: tuple[float, float, float], lat_ref: str, longitude: tuple[float, float, float],
                  lon_ref: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: lat_ref, 2: latitude, 3: lon_ref, 4: longitude})
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (90, 120, 200)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_exif_gps_is_read_from_files_and_bytes(tmp_path: Path):
    sydney = jpeg_with_gps((33.0, 51.0, 54.0), "S", (151.0, 12.0, 36.0), "E")
    (tmp_path / "sydney.jpg").write_bytes(sydney)
    for photo in (sydney, tmp_path / "sydney.jpg", str(tmp_path / "sydney.jpg")):
        location = read_exif_location(photo)
        assert location.latitude == pytest.approx(-33.865) and location.longitude == pytest.approx(151.21)
    west = read_exif_location(jpeg_with_gps((40.0, 41.0, 21.0), "N", (74.0, 2.0, 40.0), "W"))
    assert west.latitude == pytest.approx(40.689167) and west.longitude == pytest.approx(-74.044444)


def test_photos_without_gps_or_unreadable_have_no_location(tmp_path: Path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    assert read_exif_location(buffer.getvalue()) is None
    assert read_exif_location(b"not an image") is None
    assert read_exif_location(tmp_path / "missing.jpg") is None


def test_distances_and_the_rule():
    assert haversine_km(Location(48.8566, 2.3522), Location(51.5074, -0.1278)) == pytest.approx(343.5, abs=0.5)
    assert haversine_km(QUTB_MINAR, ALAI_DARWAZA) == pytest.approx(0.037, abs=0.005)
    assert haversine_km(QUTB_MINAR, TAJ_MAHAL) == pytest.approx(172.1, abs=0.5)
    assert geo_factor(10.0, 50.0) == 1.0 and geo_factor(50.0, 50.0) == 1.0 and geo_factor(None, 50.0) == 1.0
    assert geo_factor(100.0, 50.0) == pytest.approx(math.exp(-1)) and geo_factor(550.0, 50.0) < 1e-4
    assert geo_factor(5000.0, 0.0) == 1.0  # radius 0: the rule is off
    with pytest.raises(ValueError):
        Location(91.0, 0.0)


def geo_recognizer(radius_km: float = 50.0) -> Recognizer:
    """Three landmarks: two neighbours in Delhi, one in Agra; one more without coordinates."""
    directions = np.eye(8, dtype=np.float32)[:4]
    index = EmbeddingIndex.build(directions, ["q", "a", "t", "x"], np.array([1, 2, 3, 4]), "flat")
    recognizer = Recognizer(None, np.zeros(0, np.int64), {1: "Qutb Minar", 2: "Alai Darwaza", 3: "Taj Mahal", 4: "Nowhere"},
                            index, RecognizeConfig(knn_k=4, knn_weight=1.0, min_confidence=0.5, geo_radius_km=radius_km))
    recognizer.info = {1: {"latitude": QUTB_MINAR.latitude, "longitude": QUTB_MINAR.longitude},
                       2: {"latitude": ALAI_DARWAZA.latitude, "longitude": ALAI_DARWAZA.longitude},
                       3: {"latitude": TAJ_MAHAL.latitude, "longitude": TAJ_MAHAL.longitude, "url": "u"}}
    return recognizer


def query(weights: dict[int, float]) -> np.ndarray:
    """An embedding whose cosine to landmark i's reference is weights[i] (roughly: normalised)."""
    vector = np.zeros(8, np.float32)
    for landmark, weight in weights.items():
        vector[landmark - 1] = weight
    vector[7] = math.sqrt(max(0.0, 1 - float((vector ** 2).sum())))
    return vector[None]


def test_a_far_landmark_loses_and_a_near_one_gains_nothing():
    recognizer = geo_recognizer()
    photo = query({3: 0.8, 1: 0.6})  # looks most like the Taj Mahal, somewhat like the Qutb Minar
    without = recognizer.score(photo, np.zeros((1, 0)))[0]
    assert without.landmark_id == 3 and without.confidence == pytest.approx(0.8, abs=1e-4)
    in_delhi = recognizer.score(photo, np.zeros((1, 0)), locations=[Location(28.53, 77.19)])[0]
    assert in_delhi.landmark_id == 1 and in_delhi.confidence == pytest.approx(0.6, abs=1e-4)  # nothing gained
    taj_km = haversine_km(Location(28.53, 77.19), TAJ_MAHAL)  # 172 km: 0.8 * exp(-(172 - 50) / 50)
    assert in_delhi.known and {c.landmark_id: c.score for c in in_delhi.candidates}[3] == pytest.approx(
        0.8 * math.exp(-(taj_km - 50) / 50), abs=1e-5)
    in_agra = recognizer.score(photo, np.zeros((1, 0)), locations=[Location(27.17, 78.04)])[0]
    assert in_agra.landmark_id == 3 and in_agra.confidence == pytest.approx(0.8, abs=1e-4)


def test_neighbours_are_still_told_apart_by_the_image():
    recognizer = geo_recognizer()
    at_the_complex = [Location(28.5244, 77.1854)]
    for weights, expected in (({1: 0.9, 2: 0.7}, 1), ({1: 0.6, 2: 0.85}, 2)):
        prediction = recognizer.score(query(weights), np.zeros((1, 0)), locations=at_the_complex)[0]
        assert prediction.landmark_id == expected
        assert prediction.confidence == pytest.approx(max(weights.values()), abs=1e-4)


def test_far_from_every_known_landmark_is_no_known_landmark():
    recognizer = geo_recognizer()
    prediction = recognizer.score(query({1: 0.9, 2: 0.7}), np.zeros((1, 0)), locations=[Location(48.85, 2.35)])[0]
    assert not prediction.known and prediction.confidence < 0.01


def test_missing_coordinates_or_location_leave_the_answer_alone():
    recognizer = geo_recognizer()
    photo = query({4: 0.9, 3: 0.5})  # "Nowhere" has no coordinates: the prior cannot judge it
    far = recognizer.score(photo, np.zeros((1, 0)), locations=[Location(-33.86, 151.21)])[0]
    assert far.landmark_id == 4 and far.confidence == pytest.approx(0.9, abs=1e-4) and far.known
    unknown = recognizer.score(photo, np.zeros((1, 0)), locations=[None])[0]
    plain = recognizer.score(photo, np.zeros((1, 0)))[0]
    assert (unknown.landmark_id, unknown.confidence) == (plain.landmark_id, plain.confidence)
    off = geo_recognizer(radius_km=0.0).score(query({3: 0.8}), np.zeros((1, 0)), locations=[Location(-33.86, 151.21)])[0]
    assert off.landmark_id == 3 and off.confidence == pytest.approx(0.8, abs=1e-4)
