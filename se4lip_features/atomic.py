"""Atomic writes: files appear whole, under their final names, or not at all, and writers never share a file."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


def temp_beside(target: Path, folder: bool = False, made: list[Path] | None = None) -> Path:
    """A new, empty file (or folder) next to ``target``, unique to this writer: ``.<name>.<random>.partial``.

    Beside the target so that renaming it into place stays on one file system; hidden so that folder scans
    (``se4lip-extract folder/``) never pick it up. The name is appended to ``made`` *before* the file is
    created, so a signal arriving at any moment leaves nothing that the caller's clean-up does not know of.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        if made is not None:
            made.append(path)
        try:
            if folder:
                os.mkdir(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:  # another writer's name: draw again
            if made is not None:
                made.pop()


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def replacing(*targets: Path, folder: bool = False) -> Iterator[list[Path]]:
    """Write ``targets`` as a set: yields one unique temporary path per target, renamed into place together.

    When the ``with`` block ends normally, every temporary is renamed onto its target. If a rename fails,
    the targets already replaced get their earlier contents back (or are removed if they had none), so a
    set such as a ``.npy`` and its sidecar is never left mixed. On any exception (KeyboardInterrupt and the
    signals the command-line tools turn into exceptions included) the temporaries are removed and the
    targets keep their contents. ``folder=True`` yields folders instead of files.
    """
    targets = tuple(Path(t) for t in targets)
    temps = []
    backups = {}  # target -> its earlier contents, kept until every rename has succeeded
    renaming = False
    try:
        for target in targets:  # inside the try: a signal between two of them leaves none behind
            temp_beside(target, folder, made=temps)
        yield temps
        for target in targets:
            if target.exists():
                backups[target] = backup = temp_beside(target, folder)
                if folder:  # a folder cannot be hard-linked: it is moved aside for the moment of the swap
                    os.replace(target, backup)
                else:
                    os.unlink(backup)
                    os.link(target, backup)
        renaming = True
        for temp, target in zip(temps, targets):
            os.replace(temp, target)
    except BaseException:
        for temp, target in zip(temps, targets):
            # A target was replaced when its temporary is gone: read from the disk, not counted, so that a signal
            # arriving just after a rename (before any counting) still has it undone.
            renamed = renaming and not os.path.lexists(temp)
            if target in backups and (renamed or folder):
                if folder:
                    remove(target)  # os.replace cannot put a folder over another
                os.replace(backups.pop(target), target)
            elif renamed:
                remove(target)
        raise
    finally:
        for path in (*temps, *backups.values()):
            remove(path)


def write_text(path: Path, text: str) -> None:
    """Write a text file (a report, a JSON) atomically: readers see the old file or the new one, never half."""
    with replacing(Path(path)) as (tmp,):
        tmp.write_text(text)


def save_figure(fig, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG atomically."""
    with replacing(Path(path)) as (tmp,):
        fig.savefig(tmp, dpi=dpi, format="png")
