"""Reading embedded camera images (``dtype: image`` features) from a data file.

LeRobot stores an image camera as a column of the data file whose cells are structs
``{bytes: binary, path: string}`` (the ``datasets`` Image feature), PNG or JPEG bytes in
``bytes``. Only the row groups holding the requested rows are read, and only that column.

Invariants: read-only; problems are :class:`~common.errors.DatasetError` naming the file, the
camera and the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.dataset.layout import row_groups_covering
from narrator.common.errors import DatasetError


def _image_bytes(path: Path, camera: str, row: int, cell: Any) -> bytes:
    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if not isinstance(data, bytes | bytearray) or not data:
        raise DatasetError(
            path,
            f"row {row} of image camera {camera!r} holds no embedded image bytes; narrator "
            "reads images stored in the data file (the `bytes` of LeRobot's image struct)",
        )
    return bytes(data)


def read_image_cells(path: Path, camera: str, rows: Sequence[int]) -> list[bytes]:
    """The image bytes of ``camera`` at file rows ``rows``, in that order."""
    cells: dict[int, bytes] = {}
    try:
        with pq.ParquetFile(path) as parquet:
            if parquet.schema_arrow.get_field_index(camera) < 0:
                raise DatasetError(path, f"has no column for image camera {camera!r}")
            by_group: dict[int, list[tuple[int, int]]] = {}
            for row in sorted(set(rows)):
                groups, offset = row_groups_covering(parquet.metadata, row, 1)
                if not groups:
                    raise DatasetError(path, f"has no row {row} (image camera {camera!r})")
                by_group.setdefault(groups[0], []).append((row, offset))
            for group, members in sorted(by_group.items()):
                column = parquet.read_row_group(group, columns=[camera]).column(camera)
                for row, offset in members:
                    cells[row] = _image_bytes(path, camera, row, column[offset].as_py())
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot read image column {camera!r} ({exc})") from exc
    return [cells[row] for row in rows]
