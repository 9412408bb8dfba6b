"""Reading labelled text tables (TSV, CSV, JSONL) with errors that name file and line.

Rows come back as `Row(line, fields)` so later checks (labels, empty text) can point at the
exact line too. Nothing is skipped silently: a malformed row is an error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys

from lmtransfer import paths
from lmtransfer.errors import UserError

csv.field_size_limit(sys.maxsize)


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and line."""


@dataclasses.dataclass
class Row:
    line: int  # 1-based line number in the file
    fields: dict[str, str]


def table_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    fmt = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(ext)
    if fmt is None:
        raise DataError(f"{path}: unknown file type {ext!r}; use .tsv, .csv or .jsonl")
    return fmt


def read_utf8(path: str) -> str:
    """A file's text; bytes that are not UTF-8 are an error naming the file and line."""
    with paths.open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8 ({e.reason}); convert the "
                        "file to UTF-8") from None


def read_table(path: str, columns: list[str] | None = None, fmt: str | None = None,
               quoting: int = csv.QUOTE_MINIMAL) -> list[Row]:
    """Reads a table. `columns` names the columns of a header-less TSV/CSV (else line 1 is
    the header). GLUE TSVs need `quoting=csv.QUOTE_NONE` (their quotes are text)."""
    if not paths.exists(path):
        raise DataError(f"{path}: file not found")
    fmt = fmt or table_format(path)
    text = read_utf8(path)  # bytes that are not UTF-8 fail here, with the line
    rows = (_read_jsonl(path, text) if fmt == "jsonl" else
            _read_delimited(path, text, fmt, columns, quoting))
    if not rows:
        raise DataError(f"{path}: no examples (empty file)")
    return rows


def _read_delimited(path, text, fmt, columns, quoting) -> list[Row]:
    delimiter = "\t" if fmt == "tsv" else ","
    rows = []
    with io.StringIO(text.removeprefix("\ufeff"), newline="") as f:  # strip a BOM
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = columns
        for record in reader:
            line = reader.line_num
            if header is None:
                header = [h.strip() for h in record]
                continue
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line (e.g. trailing newline)
            if len(record) != len(header):
                raise DataError(f"{path}:{line}: expected {len(header)} columns "
                                f"({', '.join(header)}), got {len(record)}")
            rows.append(Row(line, dict(zip(header, record, strict=True))))
    return rows


def _read_jsonl(path, content) -> list[Row]:
    rows = []
    for line, text in enumerate(content.split("\n"), 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{line}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object per line")
        rows.append(Row(line, {k: v if isinstance(v, str) else json.dumps(v)
                               for k, v in obj.items()}))
    return rows


def column(rows: list[Row], name: str, path: str, allow_empty: bool = False) -> list[str]:
    """Values of column `name`; a missing column or (unless allowed) empty value is an error."""
    out = []
    for r in rows:
        if name not in r.fields:
            raise DataError(f"{path}:{r.line}: no column {name!r} (columns: "
                            f"{', '.join(r.fields)})")
        v = r.fields[name]
        if not allow_empty and not str(v).strip():
            raise DataError(f"{path}:{r.line}: empty {name!r}")
        out.append(v)
    return out
