"""Which files a path typed in the app may read: only inside the data directory or the import
directory (``KAPPALAB_IMPORT_DIR``).

The Pipeline page's "path on the server" field is typed by whoever reaches the page; without
this check it could name any file the server can read. The path is resolved first (``~``,
``..``, symbolic links), then checked, and only then tested for existence, so the answer says
nothing about files outside the allowed folders. The command line (``--file``) is not limited:
whoever runs it can read those files anyway.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from pipeline.sources.base import SourceError


class PathNotAllowed(SourceError):
    """A typed server path that resolves outside the allowed folders."""


def resolve_import_path(typed: str, allowed: Iterable[Path | None]) -> Path:
    """The real path of ``typed`` if it lies inside one of ``allowed`` (a relative path is
    taken inside the first of them) and is a file; else :class:`SourceError` with a sentence
    that names the typed text and the fix, never anything read from a file."""
    roots = [Path(r).expanduser().resolve() for r in allowed if r]
    if not roots:
        raise PathNotAllowed("No folder is open to server paths; upload the file instead.")
    text = typed.strip()
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = roots[0] / path
    real = path.resolve()  # follows every symbolic link and removes ..
    if not any(real == root or real.is_relative_to(root) for root in roots):
        names = " or ".join(str(r) for r in roots)
        raise PathNotAllowed(f"The path {text!r} is outside the folders the app may read "
                             f"({names}); copy the file there (KAPPALAB_IMPORT_DIR names an "
                             "extra folder) or upload it instead.")
    if not real.is_file():
        raise SourceError(f"There is no file at {text!r} in those folders; check the path or "
                          "upload the file instead.")
    return real
