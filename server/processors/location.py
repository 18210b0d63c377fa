"""Location checks: finite coordinates within range; name and address normalized and bounded."""

from __future__ import annotations

import math

from chat.v1 import common_pb2
from server.domain.errors import FieldViolation
from server.normalizers.text import normalize_text

MAX_LABEL_CHARS = 1000


def process_location(
    location: common_pb2.LocationContent, field: str
) -> tuple[common_pb2.LocationContent, list[FieldViolation]]:
    """The cleaned location, and what is wrong with it (empty when valid)."""
    violations: list[FieldViolation] = []
    if not math.isfinite(location.latitude) or not -90 <= location.latitude <= 90:
        violations.append(FieldViolation(f"{field}.latitude", "must be between -90 and 90"))
    if not math.isfinite(location.longitude) or not -180 <= location.longitude <= 180:
        violations.append(FieldViolation(f"{field}.longitude", "must be between -180 and 180"))
    # Cut before normalizing (see content.py): whatever is longer fails the check below anyway.
    name = normalize_text(location.name[: 4 * MAX_LABEL_CHARS + 1]).text
    address = normalize_text(location.address[: 4 * MAX_LABEL_CHARS + 1]).text
    for label, value in (("name", name), ("address", address)):
        if len(value) > MAX_LABEL_CHARS:
            violations.append(
                FieldViolation(f"{field}.{label}", f"at most {MAX_LABEL_CHARS} characters")
            )
    cleaned = common_pb2.LocationContent(
        latitude=location.latitude, longitude=location.longitude, name=name, address=address
    )
    return cleaned, violations
