"""Which file a :class:`~pipeline.store.sqlite.SqliteStore` writes to.

An open SQLite connection keeps writing into its file after that file was deleted or renamed
away: everything "stored" then goes into an unlinked inode and is lost on close, while the
indexer commits the offsets. So before every write the store checks that the file at its path
is still the one it opened (device and inode), and that no thread opens the path with a mode
that creates it (``mode=rw``): a deleted file stays deleted until someone puts a store back.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from pipeline.store.base import StoreUnavailable

log = logging.getLogger("pipeline.store.sqlite")

#: The tables a KappaLab store has (pipeline/store/sqlite.py creates them).
TABLES = ("bars", "predictions", "docs", "news", "fundamentals", "artefacts")


def sqlite_uri(path, mode: str) -> str:
    """An SQLite URI for ``path``: ``rw`` opens an existing file only, ``rwc`` may create."""
    return f"{Path(path).resolve().as_uri()}?mode={mode}"


def file_identity(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def missing_tables(path) -> str:
    """'' when the file at ``path`` has every KappaLab table, else what is wrong with it."""
    try:
        conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True, timeout=1.0)
        try:
            have = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"unreadable: {exc}"
    missing = [t for t in TABLES if t not in have]
    return f"no table {', '.join(missing)}" if missing else ""


class FileIdentity:
    """The (device, inode) of the store's file, checked before each write.

    Deleted: a store outage (:class:`StoreUnavailable`; nothing is written into the unlinked
    file). Replaced by a file without the KappaLab tables: an outage too. Replaced by (or
    restored to) a file that has them: adopted, said in the log."""

    def __init__(self, path):
        self.path = Path(path)
        self.current = file_identity(self.path)

    def check(self) -> bool:
        """True when a restored store at the path was adopted (connections must reopen)."""
        try:
            now = file_identity(self.path)
        except FileNotFoundError:
            raise StoreUnavailable(
                f"The SQLite file {self.path} was deleted while in use; nothing is written "
                "until a KappaLab store is back at that path (restore it, or restart the "
                "worker to start a new, empty one).") from None
        except OSError as exc:
            raise StoreUnavailable(f"The SQLite file {self.path} cannot be checked "
                                   f"({exc.strerror}).") from None
        if now == self.current:
            return False
        missing = missing_tables(self.path)
        if missing:
            raise StoreUnavailable(
                f"The SQLite file {self.path} was replaced by a file that is not a KappaLab "
                f"store ({missing}); nothing is written until a KappaLab store is back at "
                "that path.")
        self.current = now
        log.warning("the SQLite file %s was replaced by another KappaLab store (restored?); "
                    "writing to the new file from now on", self.path)
        return True
