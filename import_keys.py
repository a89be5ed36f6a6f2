"""The first line of a file on which each key appeared, kept in the database (a temporary
table of the import's connection), so that an import finds a file's duplicate rows in
constant memory however long the file is, in a dry run too."""

from __future__ import annotations

from models import database


class FirstSeen:
    """Use as a context manager around one import, on one connection.

    Parameters:
      table: the temporary table's name.
    """

    def __init__(self, *, table: str = "import_first_seen") -> None:
        self.table = table

    def __enter__(self) -> "FirstSeen":
        with database.atomic():
            database.execute_sql(f'DROP TABLE IF EXISTS "{self.table}"')
            database.execute_sql(f'CREATE TEMPORARY TABLE "{self.table}" ("key" TEXT PRIMARY KEY, "line" INTEGER NOT NULL)')
        return self

    def __exit__(self, *exc) -> None:
        with database.atomic():
            database.execute_sql(f'DROP TABLE IF EXISTS "{self.table}"')

    def claim(self, pairs: list[tuple[str, int]]) -> dict[str, int]:
        """Record each (key, line) unless the key was seen before; returns every given key's
        first line (a key seen on an earlier line, or earlier in ``pairs``, keeps that one)."""
        if not pairs:
            return {}
        p = database.param
        with database.atomic():
            database.execute_sql(
                f'INSERT INTO "{self.table}" ("key", "line") VALUES {", ".join([f"({p}, {p})"] * len(pairs))} '
                'ON CONFLICT ("key") DO NOTHING',
                [value for pair in pairs for value in pair],
            )
            keys = sorted({key for key, _ in pairs})
            rows = database.execute_sql(
                f'SELECT "key", "line" FROM "{self.table}" WHERE "key" IN ({", ".join([p] * len(keys))})', keys)
            return dict(rows.fetchall())
