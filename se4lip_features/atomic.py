"""Atomic writes: files appear whole, under their final names, or not at all, and writers never share a file."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
NAME_MAX = 255  # bytes in a file name on the usual file systems


def stale_temporaries(target: Path) -> list[Path]:
    """The temporaries of ``target`` that a killed writer left (SIGKILL, power loss): call only holding its lock."""
    stem = target.name[: NAME_MAX - len(".12345678.partial") - 1]
    return sorted(target.parent.glob(f".{glob.escape(stem)}.????????.partial"))


class Busy(FileExistsError):
    """Another process of this user holds the lock of an output."""


@contextlib.contextmanager
def exclusive(target: Path, wait: bool = False) -> Iterator[None]:
    """Hold this user's exclusive lock on the output ``target`` (a file set or a folder) for the ``with`` block.

    Two se4lip tools writing one output never interleave: with ``wait`` the second waits for the first (then
    finds its output there, so without --force it refuses to overwrite it); without, it raises :class:`Busy`
    at once. The lock is an ``flock`` on a file named after the target's absolute path in a per-user folder
    of the temporary directory, so nothing is left beside the output; it ends with the process, however it
    ends. Where ``fcntl`` does not exist (Windows), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    key = hashlib.sha256(os.path.realpath(target).encode()).hexdigest()[:32]  # a link and its target: one lock
    folder = Path(tempfile.gettempdir()) / f"se4lip-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise Busy(f"{target}: another se4lip tool is writing it now; wait for it to finish or choose "
                           "another output") from None
            log.info("%s: another se4lip tool is writing it; waiting for it to finish", target)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def temp_beside(target: Path, folder: bool = False, made: list[Path] | None = None) -> Path:
    """A new, empty file (or folder) next to ``target``, unique to this writer: ``.<name>.<random>.partial``.

    Beside the target so that renaming it into place stays on one file system; hidden so that folder scans
    (``se4lip-extract folder/``) never pick it up. The name is appended to ``made`` *before* the file is
    created, so a signal arriving at any moment leaves nothing that the caller's clean-up does not know of.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[: NAME_MAX - len(".12345678.partial") - 1]  # a 243-character name still fits in 255
    while True:
        path = target.with_name(f".{stem}.{secrets.token_hex(4)}.partial")
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
    targets keep their contents. ``folder=True`` yields folders instead of files. A target that is a symbolic
    link is written through it: the file it points to is replaced and the link stays.
    """
    targets = tuple(Path(os.path.realpath(t)) if os.path.islink(t) else Path(t) for t in targets)
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
    except BaseException as err:
        # name the output, not the hidden temporary an error happened on
        named = {str(t): target for t, target in zip([*temps, *backups.values()], [*targets, *backups])}
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
        if isinstance(err, OSError) and err.filename is not None and str(err.filename) in named:
            raise OSError(err.errno, err.strerror, str(named[str(err.filename)])) from None
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
