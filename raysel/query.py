"""`python -m raysel.query "SQL"`: run DuckDB SQL over the result store and print a table, CSV or JSON.

Argument parsing and output formatting only; the views and SQL execution live in :mod:`raysel.store`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from raysel.errors import exits_cleanly_on_user_error
from raysel.store import sql_arrow

FORMATS = ("table", "csv", "json")
SIGNIFICANT_DIGITS = 4  # floats in the table view; CSV and JSON keep full precision
NULL_TEXT = "NULL"
MAX_CELL_WIDTH = 60  # long cells (per-class IoU lists, paths) are shortened with '...' in the table view

EXAMPLES = """\
views:
  trials       one row per trial: sweep_id, trial_id, method, task, dataset, source, target, model, seed,
               hp_<name> (one typed column per hyperparameter), status, error, retries, wall_time_s,
               started_at, finished_at, score_<selector>, heldout_miou, heldout_iou (per class),
               heldout_accuracy, other final metrics, class_names (what each heldout_iou entry is),
               checkpoint_path, predictions_path, versions
  selections   one row per selection decision: sweep_id, selection_id, method, target, selector,
               selected_trial_id, score, num_candidates, created_at, heldout_* evaluation columns

examples:
  python -m raysel.query "SELECT method, trial_id, score_fmiou, heldout_miou FROM trials ORDER BY score_fmiou DESC LIMIT 5"
  python -m raysel.query "SELECT * FROM selections" --format json
  python -m raysel.query "DESCRIBE trials" --results /data/raysel-results
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by `raysel query`)."""
    parser = argparse.ArgumentParser(
        prog="python -m raysel.query",
        description="Run SQL (DuckDB dialect) over the raysel Parquet result store and print the result. "
                    "Hyperparameter columns of different methods are unioned by name; a column a method lacks is NULL.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("query", help="the SQL statement, e.g. \"SELECT * FROM trials LIMIT 10\"")
    parser.add_argument("--results", type=Path, default=None,
                        help="result store folder (default: $RAYSEL_RESULTS, else ./results)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="table: aligned columns, floats to 4 significant digits (default); "
                             "csv / json: full precision, for scripts")
    return parser


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the query, print the result in the requested format."""
    args = build_parser().parse_args(argv)
    table = sql_arrow(args.query, args.results)
    columns = table.column_names
    rows = [tuple(row[name] for name in columns) for row in table.to_pylist()]
    output = {"table": format_table, "csv": format_csv, "json": format_json}[args.format](columns, rows)
    sys.stdout.write(output)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Formatters: (column names, rows of plain Python values) -> text
# --------------------------------------------------------------------------------------------------------------


def _format_float(value: float) -> str:
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def table_cell(value: Any) -> str:
    """One value as shown in the table view."""
    if value is None:
        return NULL_TEXT
    if isinstance(value, float):
        return _format_float(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(table_cell(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {table_cell(item)}" for key, item in value.items()) + "}"
    return str(value)


def _shorten(text: str) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= MAX_CELL_WIDTH else text[: MAX_CELL_WIDTH - 3] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """An aligned text table: numbers right-aligned, text left-aligned, a row count at the end."""
    if not columns:
        return "(no result)\n"
    cells = [[_shorten(table_cell(value)) for value in row] for row in rows]
    widths = [max([len(name), *(len(row[index]) for row in cells)]) for index, name in enumerate(columns)]
    numeric = [bool(rows) and all(_is_number(row[index]) or row[index] is None for row in rows)
               for index in range(len(columns))]

    def line(values: list[str]) -> str:
        parts = [value.rjust(width) if right else value.ljust(width)
                 for value, width, right in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), line(["-" * width for width in widths])]
    out += [line(row) for row in cells]
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out) + "\n"


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def format_json(columns: list[str], rows: list[tuple]) -> str:
    """A JSON array of row objects (NaN -> null, timestamps as ISO 8601 strings)."""
    objects = [{name: _json_value(value) for name, value in zip(columns, row)} for row in rows]
    return json.dumps(objects, indent=2) + "\n"


def format_csv(columns: list[str], rows: list[tuple]) -> str:
    """CSV with a header row; NULL is an empty field, lists are JSON arrays."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if value is None else
                         json.dumps(_json_value(value)) if isinstance(value, (list, tuple, dict)) else
                         _json_value(value) for value in row])
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
