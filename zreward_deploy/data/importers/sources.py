"""Streaming readers for the files the public sets ship: CSV, JSON arrays and JSON Lines, parquet, the
Arrow IPC stream files of an HF ``save_to_disk`` folder, and TFRecord files of ``tf.train.Example``.

Every reader yields one item at a time and holds at most one batch (a parquet batch, an Arrow record
batch, a 1 MiB text chunk, one TFRecord) in memory, so a file of any size streams. Problems inside a file
are yielded in place of the item (:class:`SourceProblem`), never raised, so one bad element costs that
element and the rest of the file is still read; a file that cannot be read at all raises
:class:`~zreward_deploy.errors.ZRewardInputError` naming it.

No third-party loader is used: pyarrow reads parquet and Arrow IPC (the ``datasets`` package is not
needed and never imported), and the TFRecord framing and the ``tf.train.Example`` protobuf are decoded
here (TensorFlow is not needed).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import struct
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import MissingDependencyError, ZRewardInputError
from ...fileio import open_regular_file, read_json_object

# The splits a public set names, and the package split each becomes (None: not imported by default; the
# *_unique splits of Pick-a-Pic are one-image-per-prompt subsets of validation/test, so importing them
# too would duplicate rows).
SPLIT_NAMES: dict[str, str | None] = {
    "train": "train",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "validation_unique": None,
    "test_unique": None,
}


@dataclass(frozen=True)
class SourceProblem:
    """An element of a source file that could not be read: ``row`` is its 1-based position (a CSV line,
    a JSON array element, a TFRecord record) and ``reason`` says why."""

    row: int | str
    reason: str


def natural_key(path: Path | str) -> list[Any]:
    """Sort key putting ``train_2`` before ``train_10`` (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def split_of_path(path: Path, root: Path | None = None) -> tuple[str | None, str | None]:
    """The package split a source file belongs to, from its name or a folder above it inside ``root``:
    ``train-00000-of-00645.parquet``, ``validation/0000.parquet``, ``images/test/test_1.json``.

    Returns ``(name, split)``: ``name`` is the set's split name found (None when no part of the path
    names one); ``split`` the package split, None for one that is not imported (``validation_unique``,
    ``test_unique``).
    """
    parts = [path.stem]
    rel = path.relative_to(root) if root is not None and path.is_relative_to(root) else path
    parts += [p for p in reversed(rel.parts[:-1])]
    for part in parts:
        lowered = part.lower()
        # the longest split name the part starts with ("validation_unique-0000" before "validation")
        for name in sorted(SPLIT_NAMES, key=len, reverse=True):
            if lowered == name or re.match(rf"{re.escape(name)}(?![a-z_])", lowered):
                return name, SPLIT_NAMES[name]
    return None, None


# --------------------------------------------------------------------------------------------------
# Text files: CSV, JSON arrays, JSON Lines
# --------------------------------------------------------------------------------------------------


def iter_csv(path: Path) -> Iterator[tuple[int, dict[str, str] | SourceProblem]]:
    """``(line number, row)`` for each data row of a CSV file with a header line (UTF-8, an optional
    byte-order mark skipped). The line number is the file's own line where the row starts."""
    try:
        raw = open_regular_file(path)
    except ZRewardInputError as exc:
        raise ZRewardInputError(str(path), exc.reason) from None
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        reader = csv.DictReader(text)
        try:
            header = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ZRewardInputError(str(path), f"cannot read the CSV header ({exc})") from None
        if not header:
            raise ZRewardInputError(str(path), "is empty: no CSV header")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                # the reader cannot resynchronise after a broken quote or bad bytes: the rest is lost
                yield (
                    start,
                    SourceProblem(
                        start, f"unreadable CSV from here on ({exc}); the rest of the file is skipped"
                    ),
                )
                return
            if None in row:  # more cells than header fields
                yield (
                    start,
                    SourceProblem(
                        start, f"{len(header) + len(row[None])} cells, the header has {len(header)}"
                    ),
                )
            else:
                yield start, row
            start = reader.line_num + 1


def iter_json_elements(
    path: Path, chunk_chars: int = 1 << 20, max_element_chars: int = 64 << 20
) -> Iterator[tuple[int, Any]]:
    """``(element number, value)`` for each element of a JSON array file, or each line of a JSON Lines
    file (decided by the first character: ``[`` or not), streamed in chunks.

    A JSON Lines line that is not JSON becomes a :class:`SourceProblem` for that line and reading goes
    on. Inside a JSON array a syntax error cannot be resynchronised (element boundaries are lost): the
    element is reported and the rest of the file is skipped, with a problem saying so. An element longer
    than ``max_element_chars`` is refused the same way (it would otherwise be buffered whole).
    """
    try:
        raw = open_regular_file(path)
    except ZRewardInputError as exc:
        raise ZRewardInputError(str(path), exc.reason) from None
    with raw:
        if _peek_first_char(raw) == "[":
            decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
            yield from _iter_json_array(raw, decoder, chunk_chars, max_element_chars)
        else:
            yield from _iter_json_lines(raw)


def _peek_first_char(raw: Any) -> str:
    head = raw.read(4096)
    raw.seek(0)
    text = head.decode("utf-8-sig", errors="replace").lstrip()
    return text[:1]


def _iter_json_lines(raw: Any) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(raw, start=1):
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        if not line.strip():
            continue
        try:
            yield number, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield number, SourceProblem(number, f"not valid UTF-8 ({exc.reason})")
        except json.JSONDecodeError as exc:
            yield number, SourceProblem(number, f"malformed JSON: {exc.msg} (column {exc.colno})")


def _iter_json_array(
    raw: Any, decoder: Any, chunk_chars: int, max_element_chars: int
) -> Iterator[tuple[int, Any]]:
    json_decoder = json.JSONDecoder()
    buf, pos, eof, number = "", 0, False, 0

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        data = raw.read(chunk_chars)
        try:
            text = decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise ZRewardInputError(
                str(getattr(raw, "name", "")), f"not valid UTF-8 ({exc.reason})"
            ) from None
        eof = not data
        buf = buf[pos:] + text
        pos = 0
        return True

    def skip_space() -> bool:
        """Advance past whitespace; False at the end of the input."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buf):
                return True
            if not more():
                return False

    if not skip_space() or buf[pos] != "[":
        yield 1, SourceProblem(1, "not a JSON array")
        return
    pos += 1
    expect_value = True
    while True:
        if not skip_space():
            yield number + 1, SourceProblem(number + 1, "the JSON array is truncated (no closing ']')")
            return
        char = buf[pos]
        if char == "]" and (number == 0 or not expect_value):
            return
        if not expect_value:
            if char != ",":
                yield (
                    number + 1,
                    SourceProblem(number + 1, f"malformed JSON array: expected ',' or ']', got {char!r}"),
                )
                return
            pos += 1
            expect_value = True
            continue
        number += 1
        while True:
            try:
                value, end = json_decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if len(buf) - pos <= max_element_chars and more():  # it may continue in the next chunk
                    continue
                why = (
                    exc.msg
                    if len(buf) - pos <= max_element_chars
                    else f"longer than {max_element_chars} characters"
                )
                yield (
                    number,
                    SourceProblem(
                        number, f"malformed JSON in element {number}: {why}; the rest of the file is skipped"
                    ),
                )
                return
            if _may_continue(value, buf, end) and more():  # a number cut at the chunk's end: "9" of "9.5"
                continue
            break
        pos = end
        expect_value = False
        yield number, value


def _may_continue(value: Any, buf: str, end: int) -> bool:
    """True when a top-level number parsed up to ``end`` may go on in text not read yet: nothing but
    whitespace follows it in ``buf``, or a character that can continue a number. Strings, arrays and
    objects end unambiguously."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    rest = buf[end:].lstrip()
    return not rest or (rest[0] in ".eE+-0123456789" and not buf[end : end + 1].isspace())


# --------------------------------------------------------------------------------------------------
# Tables: parquet files and HF save_to_disk folders (Arrow IPC streams)
# --------------------------------------------------------------------------------------------------


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet
    except ImportError:
        raise MissingDependencyError(
            "pyarrow", "data", "importing parquet or Arrow (HF save_to_disk) sources"
        ) from None
    return pyarrow


@dataclass(frozen=True)
class TableFile:
    """One table file of a source: ``kind`` is ``"parquet"`` or ``"arrow"`` (an IPC stream written by
    ``datasets``' ``save_to_disk``); ``split`` the package split (None when the name says none)."""

    path: Path
    kind: str
    split: str | None
    source_split: str


def is_save_to_disk(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def table_files(src: Path, source_split: str | None = None) -> list[TableFile]:
    """The table files of ``src``: a parquet file, a folder holding parquet files (any depth), or an HF
    ``save_to_disk`` folder (a ``Dataset`` with ``state.json``, or a ``DatasetDict`` with
    ``dataset_dict.json`` and one such folder per split).

    The split of each file comes from its name or folder (see :func:`split_of_path`), or from
    ``source_split`` when given (one split name for every file). A file whose split cannot be told raises
    :class:`ZRewardInputError` naming it and the ``--source-split`` option.
    """
    files: list[TableFile] = []
    if is_save_to_disk(src):
        if (src / "dataset_dict.json").is_file():
            splits = read_json_object(src / "dataset_dict.json").get("splits")
            if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
                raise ZRewardInputError(str(src / "dataset_dict.json"), 'must hold {"splits": [names...]}')
            for name in splits:
                files += _arrow_files(src / name, source_split or name)
        else:
            state = read_json_object(src / "state.json")
            files += _arrow_files(src, source_split or str(state.get("_split") or ""))
    elif src.is_file():
        if src.suffix != ".parquet":
            raise ZRewardInputError(
                str(src), "expected a .parquet file, a folder of parquet files or an HF save_to_disk folder"
            )
        files.append(_table_file(src, "parquet", source_split, None))
    elif src.is_dir():
        for path in sorted(src.rglob("*.parquet"), key=natural_key):
            files.append(_table_file(path, "parquet", source_split, src))
        if not files:
            raise ZRewardInputError(str(src), "holds no .parquet file and is not an HF save_to_disk folder")
    else:
        raise ZRewardInputError(str(src), "does not exist")
    return files


def _table_file(path: Path, kind: str, source_split: str | None, root: Path | None) -> TableFile:
    if source_split:
        known, split = _named_split(source_split, path)
        return TableFile(path, kind, split, source_split)
    known, split = split_of_path(path, root)
    if known is None:
        raise ZRewardInputError(
            str(path),
            "its name does not tell its split (train / validation / test); rename it (e.g. "
            "train-00000.parquet) or pass --source-split NAME",
        )
    return TableFile(path, kind, split, known)


def _named_split(name: str, path: Path) -> tuple[bool, str | None]:
    if name.lower() not in SPLIT_NAMES:
        raise ZRewardInputError(
            str(path), f"unknown split {name!r}; the split names understood are {sorted(SPLIT_NAMES)}"
        )
    return True, SPLIT_NAMES[name.lower()]


def _arrow_files(folder: Path, split_name: str) -> list[TableFile]:
    if not split_name:
        raise ZRewardInputError(
            str(folder), "the save_to_disk folder names no split; pass --source-split NAME"
        )
    _, split = _named_split(split_name, folder)
    names: list[str] = []
    if (folder / "state.json").is_file():
        data_files = read_json_object(folder / "state.json").get("_data_files")
        if isinstance(data_files, list):
            names = [
                d["filename"]
                for d in data_files
                if isinstance(d, dict) and isinstance(d.get("filename"), str)
            ]
    if not names:
        names = [p.name for p in sorted(folder.glob("data-*.arrow"), key=natural_key)]
    if not names:
        raise ZRewardInputError(str(folder), "holds no data-*.arrow file")
    for name in names:
        if os.path.sep in name or name.startswith("."):
            raise ZRewardInputError(
                str(folder / "state.json"), f"names a data file outside the folder: {name!r}"
            )
    return [TableFile(folder / name, "arrow", split, split_name) for name in names]


def table_columns(file: TableFile) -> list[str]:
    """The column names of a table file (read from its schema only)."""
    pa = _pyarrow()
    try:
        if file.kind == "parquet":
            return list(pa.parquet.ParquetFile(file.path).schema_arrow.names)
        with pa.OSFile(str(file.path)) as f:
            return list(pa.ipc.open_stream(f).schema.names)
    except (OSError, pa.ArrowException) as exc:
        raise ZRewardInputError(str(file.path), f"cannot be read as {file.kind} ({exc})") from None


def table_rows_count(file: TableFile) -> int | None:
    """Rows in a parquet file (from its footer); None for Arrow streams (counting needs a full read)."""
    if file.kind != "parquet":
        return None
    pa = _pyarrow()
    try:
        return int(pa.parquet.ParquetFile(file.path).metadata.num_rows)
    except (OSError, pa.ArrowException) as exc:
        raise ZRewardInputError(str(file.path), f"cannot be read as parquet ({exc})") from None


def iter_table_batches(
    file: TableFile, columns: Sequence[str], batch_size: int = 256, skip_rows: int = 0
) -> Generator[tuple[int, list[dict[str, Any]]], None, int]:
    """``(first row number, rows)`` per batch of ``file``, rows as dicts of the ``columns`` that exist;
    the first ``skip_rows`` rows are skipped (whole parquet row groups without reading them). The
    generator's return value is the number of rows in the file (``n = yield from ...``).

    Parquet is read with ``ParquetFile.iter_batches`` (one row group's selected columns in memory at a
    time); Arrow streams with the IPC stream reader over a plain file (not a memory map, so pages already
    read are released and resident memory does not grow with the file). Row numbers are 1-based.
    """
    pa = _pyarrow()
    try:
        if file.kind == "parquet":
            return (yield from _parquet_batches(pa, file.path, columns, batch_size, skip_rows))
        return (yield from _arrow_batches(pa, file.path, columns, skip_rows))
    except (OSError, pa.ArrowException) as exc:
        raise ZRewardInputError(str(file.path), f"cannot be read as {file.kind} ({exc})") from None


def _parquet_batches(
    pa: Any, path: Path, columns: Sequence[str], batch_size: int, skip_rows: int
) -> Generator[tuple[int, list[dict[str, Any]]], None, int]:
    # pre_buffer=False: pyarrow's default pre-buffers every requested row group's columns when
    # iter_batches starts (the whole file: 25 MiB for a 23 MiB file in bench_import, 500 MiB for a
    # Pick-a-Pic shard); without it one row group is in memory at a time. One thread: the columns are
    # opaque bytes and strings, and threads only add read-ahead memory.
    pf = pa.parquet.ParquetFile(path, pre_buffer=False)
    present = [c for c in columns if c in pf.schema_arrow.names]
    first_group, row = 0, 0
    while first_group < pf.num_row_groups and skip_rows >= (n := pf.metadata.row_group(first_group).num_rows):
        skip_rows -= n
        row += n
        first_group += 1
    groups = list(range(first_group, pf.num_row_groups))
    if not groups:
        return int(pf.metadata.num_rows)
    for batch in pf.iter_batches(
        batch_size=batch_size, row_groups=groups, columns=present, use_threads=False
    ):
        if skip_rows:
            cut = min(skip_rows, batch.num_rows)
            batch, skip_rows, row = batch.slice(cut), skip_rows - cut, row + cut
        if batch.num_rows:
            yield row + 1, batch.to_pylist()
            row += batch.num_rows
    return row


def _arrow_batches(
    pa: Any, path: Path, columns: Sequence[str], skip_rows: int
) -> Generator[tuple[int, list[dict[str, Any]]], None, int]:
    row = 0
    with pa.OSFile(str(path)) as f:
        reader = pa.ipc.open_stream(f)
        present = [c for c in columns if c in reader.schema.names]
        for batch in reader:
            if skip_rows >= batch.num_rows:
                skip_rows -= batch.num_rows
                row += batch.num_rows
                continue
            batch = batch.select(present)
            if skip_rows:
                batch, row, skip_rows = batch.slice(skip_rows), row + skip_rows, 0
            # slices of a large batch keep memory per yield bounded (a save_to_disk batch can be 1000 rows)
            for start in range(0, batch.num_rows, 256):
                part = batch.slice(start, 256)
                yield row + 1, part.to_pylist()
                row += part.num_rows
    return row


def image_bytes(value: Any) -> bytes | str | None:
    """The encoded bytes of an image cell: raw ``binary`` (Pick-a-Pic's ``jpg_0``), or an HF ``Image``
    feature ``{"bytes": ..., "path": ...}`` (bytes when stored, else the path as a string); None when
    empty."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) or None
    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, (bytes, bytearray)) and data:
            return bytes(data)
        path = value.get("path")
        if isinstance(path, str) and path:
            return path
    return None


# --------------------------------------------------------------------------------------------------
# TFRecord files and tf.train.Example
# --------------------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses. Pure Python: meant for the 8-byte length
    fields; see :func:`iter_tfrecord` for why payloads are not checked by default."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_tfrecord(path: Path, check_payload: bool = False) -> Iterator[tuple[int, bytes | SourceProblem]]:
    """``(record number, payload)`` for each record of a TFRecord file.

    Framing: ``uint64 length``, ``uint32 masked CRC-32C of the length``, ``payload``, ``uint32 masked
    CRC-32C of the payload`` (little-endian). The length's checksum is always verified (a bad one means
    the framing is lost: the rest of the file is reported and skipped); the payload's only with
    ``check_payload`` (a pure-Python CRC over RichHF's heatmap PNGs is slow, and a damaged payload fails
    the protobuf decoding anyway).
    """
    try:
        f = open_regular_file(path)
    except ZRewardInputError as exc:
        raise ZRewardInputError(str(path), exc.reason) from None
    with f:
        number = 0
        while True:
            header = f.read(12)
            if not header:
                return
            number += 1
            if len(header) < 12:
                yield number, SourceProblem(number, "truncated record header at the end of the file")
                return
            length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
            if masked_crc32c(length_bytes) != length_crc:
                yield number, SourceProblem(number, "bad length checksum: the file is damaged from here on")
                return
            (length,) = struct.unpack("<Q", length_bytes)
            payload = f.read(length)
            footer = f.read(4)
            if len(payload) < length or len(footer) < 4:
                yield number, SourceProblem(number, "truncated record at the end of the file")
                return
            if check_payload and masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                yield number, SourceProblem(number, "bad payload checksum")
                continue
            yield number, payload


class ProtobufError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint longer than 10 bytes")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a protobuf message: an int for varints, bytes for the
    length-delimited and fixed-width types."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ProtobufError("truncated field")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(data: bytes) -> list[Any]:
    """The values of one ``tf.train.Feature`` (oneof bytes_list = 1, float_list = 2, int64_list = 3)."""
    values: list[Any] = []
    for kind, wire, body in _fields(data):
        if wire != 2:
            continue
        for number, inner_wire, item in _fields(body):
            if number != 1:
                continue
            if kind == 1 and inner_wire == 2:
                values.append(bytes(item))
            elif kind == 2 and inner_wire == 2:  # packed floats
                if len(item) % 4:
                    raise ProtobufError("packed float list of a length not divisible by 4")
                values.extend(struct.unpack(f"<{len(item) // 4}f", item))
            elif kind == 2 and inner_wire == 5:
                values.append(struct.unpack("<f", item)[0])
            elif kind == 3 and inner_wire == 2:  # packed varints
                pos = 0
                while pos < len(item):
                    value, pos = _varint(item, pos)
                    values.append(_signed64(value))
            elif kind == 3 and inner_wire == 0:
                values.append(_signed64(item))
    return values


def parse_tf_example(data: bytes) -> dict[str, list[Any]]:
    """Decode a serialized ``tf.train.Example`` into ``feature name -> values`` (bytes, floats or ints).

    ``Example { Features features = 1; }``, ``Features { map<string, Feature> feature = 1; }``,
    ``Feature { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }``
    (tensorflow/core/example/{example,feature}.proto). Raises :class:`ProtobufError` on malformed input.
    """
    out: dict[str, list[Any]] = {}
    for number, wire, features in _fields(data):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(features):
            if entry_number != 1 or entry_wire != 2:
                continue
            key, value = None, b""
            for field_number, field_wire, item in _fields(entry):
                if field_number == 1 and field_wire == 2:
                    try:
                        key = bytes(item).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtobufError("a feature name is not UTF-8") from None
                elif field_number == 2 and field_wire == 2:
                    value = bytes(item)
            if key is not None:
                out[key] = _feature_values(value)
    return out
