"""Where the photo was taken, as a prior on what it shows: EXIF GPS, great-circle distance and the rule.

The rule (``recognize.geo_radius_km`` = r; 0 turns it off): a candidate landmark whose coordinates are known and lie
``d`` km from where the photo was taken keeps its score when ``d <= r`` and is multiplied by ``exp(-(d - r) / r)``
beyond (r = 50 km: x0.37 at 100 km, x0.02 at 250 km, ~0 at 500 km). The candidates are then ranked again and
"no known landmark" decided on the new best score. A nearby landmark gains nothing: scores are never raised, so
neighbours (the Qutb Minar and the Alai Darwaza, 30 m apart) are still told apart by the image alone, and a photo of
a landmark the run does not know, taken next to one it knows, is not pushed towards it. A candidate without
coordinates, or a photo without a location, is left as it is.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
GPS_IFD = 0x8825
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4


@dataclass(frozen=True)
class Location:
    """A point on Earth in WGS84 degrees."""

    latitude: float
    longitude: float

    def __post_init__(self) -> None:
        if not (-90.0 <= self.latitude <= 90.0 and -180.0 <= self.longitude <= 180.0):
            raise ValueError(f"({self.latitude}, {self.longitude}) is not a latitude in [-90, 90] and a longitude "
                             "in [-180, 180]")


def haversine_km(a: Location, b: Location) -> float:
    """Great-circle distance between two points, in km."""
    lat1, lat2 = math.radians(a.latitude), math.radians(b.latitude)
    dlat, dlon = lat2 - lat1, math.radians(b.longitude - a.longitude)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def geo_factor(distance_km: float | None, radius_km: float) -> float:
    """1 within ``radius_km`` (or when the distance is unknown or the rule is off), ``exp(-(d - r) / r)`` beyond."""
    if distance_km is None or radius_km <= 0 or distance_km <= radius_km:
        return 1.0
    return math.exp(-(distance_km - radius_km) / radius_km)


def _degrees(value: object) -> float:
    """EXIF (degrees, minutes, seconds) rationals -> decimal degrees."""
    d, m, s = (float(part) for part in value)  # type: ignore[union-attr]
    return d + m / 60.0 + s / 3600.0


def read_exif_location(photo: str | Path | bytes) -> Location | None:
    """The GPS position in a photo's EXIF (a path or the file's bytes), or None when it has none or it is unreadable."""
    try:
        with Image.open(io.BytesIO(photo) if isinstance(photo, bytes) else photo) as image:
            gps = image.getexif().get_ifd(GPS_IFD)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    if not gps or GPS_LATITUDE not in gps or GPS_LONGITUDE not in gps:
        return None
    try:
        latitude = _degrees(gps[GPS_LATITUDE]) * (-1 if str(gps.get(GPS_LATITUDE_REF, "N")).upper().startswith("S") else 1)
        longitude = _degrees(gps[GPS_LONGITUDE]) * (-1 if str(gps.get(GPS_LONGITUDE_REF, "E")).upper().startswith("W") else 1)
        return Location(latitude, longitude)
    except (TypeError, ValueError, ZeroDivisionError) as error:
        log.debug("unreadable EXIF GPS in %s: %s", "an upload" if isinstance(photo, bytes) else photo, error)
        return None


def rescore(candidates: list, location: Location | None, coordinates: dict[int, Location],
            radius_km: float) -> list:
    """Candidates (objects with ``landmark_id`` and a mutable ``score``) with the rule applied, best first."""
    if location is None or radius_km <= 0:
        return candidates
    for candidate in candidates:
        place = coordinates.get(int(candidate.landmark_id))
        if place is not None:
            candidate.score = round(candidate.score * geo_factor(haversine_km(location, place), radius_km), 6)
    return sorted(candidates, key=lambda c: (-c.score, c.landmark_id))
