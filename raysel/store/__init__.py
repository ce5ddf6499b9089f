"""The Parquet result store: one package for everything about the rows raysel keeps.

* :mod:`raysel.store.schema` — the trial-row schema, once: fixed columns and types, prefixes, missing-value rules;
* :mod:`raysel.store.results` — :class:`ResultStore` (atomic one-row files), :func:`load`, :func:`sql` and the
  DuckDB views; re-exported here, so ``raysel.store.ResultStore`` and ``raysel.store.load`` are the names to use;
* :mod:`raysel.store.compaction` — one file per finished sweep (``python -m raysel.store.compaction``).

Inside the package, compaction sits above results, which sits above schema (``[tool.importlinter]`` in
pyproject.toml).
"""

from raysel.store.results import (PARQUET_SUFFIX, RESULTS_ENV, TABLES, ResultStore, default_results_root,
                                  is_compacted, key_column, load, open_connection, sql, sql_arrow, to_pandas,
                                  write_table_atomically)

__all__ = ["ResultStore", "load", "sql", "sql_arrow", "to_pandas", "open_connection", "default_results_root",
           "write_table_atomically", "is_compacted", "key_column", "TABLES", "PARQUET_SUFFIX", "RESULTS_ENV"]
