"""Safe readers for user files: NPZ archives (never unpickled), UTF-8 text and CSV/TSV tables.

Uploaded files are data, not code: NPZ members are checked from their zip and ``.npy``
headers (declared sizes, dtypes) before numpy reads them with ``allow_pickle=False``.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from pathlib import Path

import numpy as np

from hpo.data.base import DataError

DEFAULT_MAX_UNCOMPRESSED = 2**30  # bytes an NPZ archive may unpack to
MAX_COLUMNS = 1000  # a table's columns: features of one RNN step, or a text table's few
# A table's values (rows x columns), so that no upload holds a server for minutes (26M took 200 s to
# read on a busy 2-core machine).
MAX_CELLS = 2_000_000
_NUMERIC_KINDS = "biuf"  # bool, signed/unsigned integer, float
_LABEL_KINDS = "biufU"


# The column separator of each delimited text format.
DELIMITERS = {"csv": ",", "tsv": "\t"}


def read_npz(
    path: str | Path, names: list[str], max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> dict[str, np.ndarray]:
    """Read the named members of an NPZ archive as numeric (or, for ``y``, string) arrays.

    Members that are not asked for are never read. ``y`` may hold strings (class labels);
    every other member must be numeric.

    Args:
        path: the ``.npz`` file.
        names: member names to read (without ``.npy``); absent ones are simply left out.
        max_uncompressed: most bytes any member, and all members together, may unpack to.

    Returns:
        The arrays found, by member name.

    Raises:
        DataError: for an empty or non-zip file, a member over the size limit (zip bomb),
            object (pickled) or structured arrays, non-numeric dtypes or corrupt members.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError("file is empty; expected an NPZ archive written by numpy.savez")
    try:
        with zipfile.ZipFile(path) as zf:
            members = _check_zip(zf, max_uncompressed)
            wanted = [n for n in names if n in members]
            for name in wanted:
                _check_member_header(zf, members[name], name)
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in wanted}
    except DataError:
        raise
    except zipfile.BadZipFile as exc:
        raise DataError(f"not an NPZ archive (a zip of .npy arrays as written by numpy.savez): {exc}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"corrupt NPZ archive: {exc}") from None


def _check_zip(zf: zipfile.ZipFile, limit: int) -> dict[str, zipfile.ZipInfo]:
    """Refuse archives whose declared uncompressed size exceeds ``limit``; map names to members."""
    total = 0
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename.removesuffix(".npy")
        if info.file_size > limit:
            raise DataError(f"NPZ member {name!r} would unpack to {info.file_size} bytes; at most {limit} are accepted")
        total += info.file_size
        members[name] = info
    if total > limit:
        raise DataError(f"NPZ archive would unpack to {total} bytes; at most {limit} are accepted")
    return members


def _check_member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    """Read a member's ``.npy`` header and refuse object, structured or oversized arrays."""
    with zf.open(info) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except ValueError as exc:
            raise DataError(f"NPZ member {name!r} is not a valid .npy array: {exc}") from None
    if dtype.hasobject:
        raise DataError(
            f"NPZ member {name!r} holds Python objects; only numeric arrays are accepted "
            "(for sequences of different lengths give values + lengths)"
        )
    accepted = _LABEL_KINDS if name == "y" else _NUMERIC_KINDS
    if dtype.names is not None or dtype.kind not in accepted:
        what = "numbers or strings" if name == "y" else "numbers"
        raise DataError(f"NPZ member {name!r} has dtype {dtype}; only arrays of {what} are accepted")
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise DataError(f"NPZ member {name!r} declares shape {shape}, larger than its stored data")


def read_utf8(path: str | Path) -> str:
    """Read a whole file as UTF-8 text (a leading byte-order mark is dropped).

    Raises:
        DataError: for an empty file or bytes that are not UTF-8.
    """
    return decode_utf8(Path(path).read_bytes())


def decode_utf8(data: bytes) -> str:
    """Decode UTF-8 bytes (a leading byte-order mark is dropped).

    Raises:
        DataError: ``"not UTF-8 text (byte 0x.. at offset ..)"``, or ``"file is empty"``.
    """
    if not data or data.isspace():
        raise DataError("file is empty; expected a header row and data rows")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None


def parse_table(
    text: str, delimiter: str, max_columns: int = MAX_COLUMNS, max_cells: int = MAX_CELLS
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Parse CSV/TSV text with a header row (standard quoting; blank lines skipped).

    Args:
        text: the decoded file.
        delimiter: ``","`` or ``"\\t"``.
        max_columns: most columns accepted (checked on the header, before any data row).
        max_cells: most values (data rows x columns) accepted (checked as rows are read).

    Returns:
        ``(header, rows)`` where each row is ``(line_number, fields)``.

    Raises:
        DataError: for a malformed or duplicate header, more than ``max_columns`` columns or
            ``max_cells`` values, a row whose field count differs from the header's, malformed
            quoting, or no data rows.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    try:
        header = next((r for r in reader if r), [])
        if len(header) > max_columns:
            raise DataError(f"the header row has {len(header)} columns; at most {max_columns} are accepted")
        header = [h.strip() for h in header]
        if not header or not all(header):
            raise DataError(f"the header row must name every column; got {header}")
        if len(set(header)) != len(header):
            raise DataError(f"the header row names a column twice: {header}")
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(header):
                raise DataError(
                    f"line {reader.line_num} has {len(fields)} fields; the header has {len(header)} "
                    f"({', '.join(header)})"
                )
            rows.append((reader.line_num, fields))
            if len(rows) * len(header) > max_cells:
                raise DataError(f"the table has more than {max_cells} values (rows x columns) by line "
                                f"{reader.line_num}; at most {max_cells} are accepted")
    except csv.Error as exc:
        raise DataError(f"line {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise DataError("the table has a header row but no data rows")
    return header, rows


def missing_column(role: str, name: str, header: list[str]) -> DataError:
    """The error for a column that the header does not have."""
    return DataError(
        f"no {role} column {name!r}; columns found: {', '.join(header)} (set {role}_column to one of them)"
    )
