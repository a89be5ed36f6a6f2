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
        first: dict[str, int] = {}
        for key, line in sorted(pairs, key=lambda pair: pair[1]):
            first.setdefault(key, line)
        p = database.param
        with database.atomic():
            fresh = {key for (key,) in database.execute_sql(
                f'INSERT INTO "{self.table}" ("key", "line") VALUES {", ".join([f"({p}, {p})"] * len(first))} '
                'ON CONFLICT ("key") DO NOTHING RETURNING "key"',
                [value for pair in first.items() for value in pair],
            ).fetchall()}
            seen = [key for key in first if key not in fresh]  # on an earlier line of the file
            if seen:
                first.update(database.execute_sql(
                    f'SELECT "key", "line" FROM "{self.table}" WHERE "key" IN ({", ".join([p] * len(seen))})', seen
                ).fetchall())
            return first
