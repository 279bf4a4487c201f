"""The patch engine: anchored, reversible insertions into a renderer checkout, shared by every renderer.

An ``Edit`` finds a few anchor lines of the renderer's own code (exactly, and exactly once within an optional
scope) and replaces them by a block that keeps them and adds lines ending in ``# se4lip-patch``, or rewrites
one of them (``Swap``). A ``Renderer`` is a repository, the commit its anchors were verified at and its edits;
each renderer module of this package holds its own (the table of what differs), and ``patch`` is the command
line over all of them. Reverting removes the marked lines and restores rewritten ones, so a patch followed by
a revert gives the original bytes back; line endings are kept. ``plan`` checks every file before any is
written, and ``write`` replaces the files only once all are staged.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARK = "# se4lip-patch"
# The package se4lip-patch writes at the top of a checkout: this package's runtime modules (all but ``patch``)
# and ``sidecar.py``, the same files as installed, so the checkout runs where se4lip_features is not importable.
RUNTIME = "se4lip_adapters"
MANIFEST = "MANIFEST.json"  # in RUNTIME: the SHA-256 of each file se4lip-patch wrote there
# In RUNTIME: for each renderer file a patch changed, its original bytes and the SHA-256 of the bytes the patch
# wrote, so that a later version of se4lip-patch, whose edits differ, can still revert (or re-patch) it.
RESTORE = "RESTORE.json"

# Items of an edit's patched block: an anchor line kept as it is, a new line, or an anchor line rewritten.
Keep = int  # index into the anchor


@dataclass(frozen=True)
class New:
    text: str


@dataclass(frozen=True)
class Swap:
    index: int  # the anchor line this one replaces
    text: str


@dataclass(frozen=True)
class Edit:
    """Replace ``anchor`` (consecutive lines, unique within ``scope``) by ``patched``."""

    path: str  # relative to the checkout, "/"-separated
    what: str  # what the anchor is, for messages
    anchor: tuple[str, ...]
    patched: tuple[Keep | New | Swap, ...]
    scope: str | None = None  # a line heading the block (class, def) that the anchor must lie in

    def patched_text(self) -> tuple[str, ...]:
        return tuple(self.anchor[item] if isinstance(item, int) else item.text for item in self.patched)


@dataclass(frozen=True)
class Renderer:
    repo: str
    commit: str  # the upstream commit the anchors were verified against
    edits: tuple[Edit, ...]


def marked(indent: str, *lines: str) -> tuple[New, ...]:
    """New lines at ``indent``, each ending in the mark that ``--revert`` removes."""
    return tuple(New(f"{indent}{line}  {MARK}") for line in lines)


def imports(module: str, alias: str) -> tuple[str, str]:
    """Import a renderer module of the adapters as ``alias``: the installed package's, else the checkout's copy.

    The copy (``RUNTIME``, written by se4lip-patch) lets a renderer environment without se4lip_features read
    features and run ``se4lip-extract`` of another environment.
    """
    return (f"try: from se4lip_features.adapters import {module} as {alias}",
            f"except ImportError: from {RUNTIME} import {module} as {alias}")


def branch(indent: str, head: str, imp: tuple[str, str], *body: str) -> tuple[New, ...]:
    """``head`` (an ``if``/``elif`` on the se4lip feature) at ``indent``; ``imp`` and ``body`` one level deeper.

    The import sits inside the branch, so a patched checkout imports the adapters only when se4lip is the
    chosen feature and keeps running its own features untouched otherwise.
    """
    return marked(indent, head) + marked(indent + "    ", *imp, *body)


def or_else(anchor_line: str, index: int = 0) -> tuple[New | Swap, ...]:
    """``else:`` and the anchor line ``index`` re-indented beneath it (a Swap, restored by a revert)."""
    indent = anchor_line[: len(anchor_line) - len(anchor_line.lstrip())]
    return marked(indent, "else:") + (Swap(index, f"    {anchor_line}  {MARK}"),)


def insert_after(path, what, anchor, lines, scope=None) -> Edit:
    return Edit(path, what, tuple(anchor), tuple(range(len(anchor))) + lines, scope)


def insert_before(path, what, anchor, lines, scope=None) -> Edit:
    return Edit(path, what, tuple(anchor), lines + tuple(range(len(anchor))), scope)


def insert_at(path, what, anchor, at, lines, scope=None) -> Edit:
    """Insert between anchor lines ``at - 1`` and ``at``."""
    keep = tuple(range(len(anchor)))
    return Edit(path, what, tuple(anchor), keep[:at] + lines + keep[at:], scope)



class PatchError(RuntimeError):
    """A checkout the patcher cannot handle; nothing was written."""


# -- lines ---------------------------------------------------------------------------------------------

def split_lines(text: str) -> list[tuple[str, str]]:
    """(content, ending) pairs, ending "\\r\\n", "\\n" or "" (last line); joining them gives ``text`` back."""
    parts = text.split("\n")
    lines = [(p[:-1], "\r\n") if p.endswith("\r") else (p, "\n") for p in parts[:-1]]
    if parts[-1]:
        lines.append((parts[-1], ""))
    return lines


def join_lines(lines: list[tuple[str, str]]) -> str:
    return "".join(content + ending for content, ending in lines)


def newline_of(lines: list[tuple[str, str]]) -> str:
    """The file's usual line ending, given to inserted lines."""
    crlf = sum(ending == "\r\n" for _, ending in lines)
    return "\r\n" if crlf > len(lines) - crlf else "\n"


def scope_range(lines: list[tuple[str, str]], scope: str | None, where: str) -> tuple[int, int]:
    """Line range [start, stop) of the block headed by ``scope``: until the next line indented no deeper."""
    if scope is None:
        return 0, len(lines)
    heads = [i for i, (content, _) in enumerate(lines) if content == scope]
    if len(heads) != 1:
        raise PatchError(f"{where}: expected the line {scope!r} once, found it {len(heads)} times")
    start = heads[0] + 1
    depth = len(scope) - len(scope.lstrip())
    for i in range(start, len(lines)):
        content = lines[i][0]
        if content.strip() and len(content) - len(content.lstrip()) <= depth:
            return start, i
    return start, len(lines)


def find_block(lines, block: tuple[str, ...], start: int, stop: int) -> list[int]:
    """Start indices of ``block`` as consecutive line contents within [start, stop)."""
    n = len(block)
    return [i for i in range(start, stop - n + 1) if all(lines[i + k][0] == block[k] for k in range(n))]


def locate(lines, edit: Edit, where: str) -> tuple[str, int]:
    """("patched" | "unpatched", index of the block); PatchError when neither is there exactly once."""
    start, stop = scope_range(lines, edit.scope, where)
    inside = f" in the block of {edit.scope.strip()!r}" if edit.scope else ""
    for state, block in (("patched", edit.patched_text()), ("unpatched", edit.anchor)):
        hits = find_block(lines, block, start, stop)
        if len(hits) > 1:
            raise PatchError(f"{where}: {edit.what}: found {len(hits)} times{inside}, expected once:\n"
                             + "\n".join(f"    {line}" for line in block))
        if hits:
            return state, hits[0]
    raise PatchError(f"{where}: cannot find {edit.what}{inside}; looked for the line(s)\n"
                     + "\n".join(f"    {line}" for line in edit.anchor))


def apply_edit(lines, edit: Edit, at: int, eol: str) -> list[tuple[str, str]]:
    """Replace the anchor at ``at`` by the patched block; anchor lines keep their bytes."""
    old = lines[at: at + len(edit.anchor)]
    new = []
    for item in edit.patched:
        if isinstance(item, int):
            new.append(old[item])
        elif isinstance(item, Swap):
            new.append((item.text, old[item.index][1]))
        else:
            if new and new[-1][1] == "":
                raise PatchError(f"{edit.path}: cannot insert after the last line, which has no line ending")
            new.append((item.text, eol))
    return lines[:at] + new + lines[at + len(edit.anchor):]


def revert_edit(lines, edit: Edit, at: int) -> list[tuple[str, str]]:
    """Replace the patched block at ``at`` by the anchor with the bytes it had."""
    current = lines[at: at + len(edit.patched)]
    old = [None] * len(edit.anchor)
    for item, line in zip(edit.patched, current):
        if isinstance(item, int):
            old[item] = line
        elif isinstance(item, Swap):
            old[item.index] = (edit.anchor[item.index], line[1])
    return lines[:at] + old + lines[at + len(edit.patched):]


# -- files ---------------------------------------------------------------------------------------------

@dataclass
class FileChange:
    path: Path
    old: bytes | None  # None: a new file
    new: bytes | None  # None: the file is removed
    original: bytes | None = None  # a renderer file's bytes before any patch (what a revert gives back)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def read_restore(root: Path) -> dict:
    """The checkout's restore record (``se4lip_adapters/RESTORE.json``): relative path -> {"patched": SHA-256
    of the file as a patch wrote it, "original": its bytes before, base64}; {} where there is none."""
    import json

    try:
        record = json.loads((root / RUNTIME / RESTORE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def restore_record(root: Path, changes: list[FileChange]) -> bytes | None:
    """The restore record after a patch: each changed renderer file's original and patched SHA-256; the
    entries of files this patch left as they were are kept (None: nothing to record)."""
    import base64
    import json

    record = read_restore(root)
    for change in changes:
        if change.original is not None and change.new is not None:
            record[change.path.relative_to(root).as_posix()] = {
                "patched": _sha256(change.new), "original": base64.b64encode(change.original).decode()}
    return (json.dumps(record, indent=1, sort_keys=True) + "\n").encode() if record else None


def read_text(path: Path) -> tuple[bytes, str]:
    if not path.is_file():
        raise PatchError(f"{path}: not found")
    raw = path.read_bytes()
    return raw, raw.decode("utf-8", errors="surrogateescape")  # any byte survives a round trip


def by_file(renderer: Renderer) -> dict[str, list[Edit]]:
    files: dict[str, list[Edit]] = {}
    for edit in renderer.edits:
        files.setdefault(edit.path, []).append(edit)
    return files


def status(renderer: Renderer, root: Path) -> list[tuple[Edit, str]]:
    """The state of every edit: "patched", "unpatched", or the reason it cannot be found."""
    out = []
    for rel, edits in by_file(renderer).items():
        path = root / rel
        try:
            _, text = read_text(path)
        except PatchError as err:
            out.extend((edit, str(err)) for edit in edits)
            continue
        lines = split_lines(text)
        for edit in edits:
            try:
                out.append((edit, locate(lines, edit, str(path))[0]))
            except PatchError as err:
                out.append((edit, str(err)))
    return out


def manifest(files: dict[str, bytes]) -> bytes:
    """``MANIFEST.json`` of the runtime folder: each file's SHA-256, so that a revert removes only those."""
    import json

    return (json.dumps({name: _sha256(data) for name, data in sorted(files.items())}, indent=1)
            + "\n").encode()


def runtime_changes(root: Path, files: dict[str, bytes], revert: bool, restore: bytes | None = None
                    ) -> list[FileChange]:
    """Write ``files`` (name -> bytes, ``MANIFEST`` among them) and the ``restore`` record into
    ``<root>/se4lip_adapters/``, or on revert remove the files the manifest there lists with the bytes it
    records, their byte code and the restore record.

    Anything else in the folder (a file of the user's, one edited since) stays, and so does the folder then;
    a symlinked folder is refused, never followed.
    """
    import json

    folder = root / RUNTIME
    if folder.is_symlink():
        raise PatchError(f"{folder}: is a symbolic link; se4lip-patch writes and removes only a folder of its own "
                         "there (remove the link yourself)")
    if revert:
        if not folder.is_dir():
            return []
        try:
            recorded = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:  # written before the manifest: this version's names are the adapters' own
            recorded = {name: None for name in files}
        except (ValueError, OSError) as err:
            raise PatchError(f"{folder / MANIFEST}: unreadable ({err}); remove {folder} yourself") from None
        changes = []
        for name, sha in sorted(recorded.items()):
            path = folder / name
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if sha is None or _sha256(data) == sha:
                    changes.append(FileChange(path, data, None))
        stems = {Path(name).stem for name in recorded}
        cache = folder / "__pycache__"
        compiled = sorted(p for p in cache.glob("*.pyc") if p.name.split(".")[0] in stems) if cache.is_dir() else []
        changes += [FileChange(p, p.read_bytes(), None) for p in compiled if not p.is_symlink()]
        for own in (folder / MANIFEST, folder / RESTORE):
            if own.is_file() and not own.is_symlink() and all(c.path != own for c in changes):
                changes.append(FileChange(own, own.read_bytes(), None))
        return changes
    changes = []
    for name, new in {**files, **({RESTORE: restore} if restore is not None else {})}.items():
        path = folder / name
        old = path.read_bytes() if path.is_file() else None
        if old != new:
            changes.append(FileChange(path, old, new))
    return changes


def runtime_state(root: Path, files: dict[str, bytes]) -> str:
    """"written", "missing" or "outdated": whether ``<root>/se4lip_adapters/`` holds exactly ``files``."""
    folder = root / RUNTIME
    if not folder.is_dir():
        return "missing"
    return "outdated" if runtime_changes(root, files, revert=False) else "written"


def plan(renderer: Renderer, root: Path, revert: bool = False) -> list[FileChange]:
    """The files that patching (or reverting) would change, with their new bytes; nothing is written.

    A file patched by another version of se4lip-patch (``# se4lip-patch`` lines that are not this version's
    edits) is taken back to its original bytes from the checkout's restore record, when the record holds it
    and the file is exactly as that patch wrote it; then reverted to those bytes, or patched from them.
    Raises PatchError, before anything is written, when any anchor is missing or ambiguous, or when such a
    file cannot be taken back (edited by hand, or patched before the record existed).
    """
    import base64

    if not root.is_dir():
        raise PatchError(f"{root}: not a directory")
    restore = read_restore(root)
    bases = {}  # rel -> (path, raw bytes, lines to work from, original bytes or None)
    for rel, edits in by_file(renderer).items():
        path = root / rel
        try:
            raw, text = read_text(path)
        except PatchError as err:  # reported with the anchors below: a missing file may mean another renderer
            bases[rel] = err
            continue
        lines, original = split_lines(text), None
        stray = _stray_marks(lines, edits, path)
        if stray:
            entry = restore.get(rel)
            if not isinstance(entry, dict) or entry.get("patched") != _sha256(raw):
                raise PatchError(f"{path}: lines {stray} end in {MARK!r} but are not edits of this version of "
                                 "se4lip-patch (edited by hand, or patched by a version that kept no record of the "
                                 f"original in {RUNTIME}/{RESTORE}); restore the file (e.g. git checkout) and "
                                 "patch again")
            original = base64.b64decode(entry["original"])
            lines = split_lines(original.decode("utf-8", errors="surrogateescape"))
        bases[rel] = (path, raw, lines, original)
    found = []  # per edit: where it is, or why it is not found
    for rel, edits in by_file(renderer).items():
        for edit in edits:
            if isinstance(bases[rel], PatchError):
                found.append(bases[rel])
                continue
            path, _, lines, _ = bases[rel]
            try:
                found.append(locate(lines, edit, str(path)))
            except PatchError as err:
                found.append(err)
    if all(isinstance(f, PatchError) for f in found):
        raise PatchError(f"{root}: does not look like a {renderer.repo} checkout: none of the {len(found)} places "
                         f"se4lip-patch edits was found (verified at {renderer.commit[:7]}); the first:\n{found[0]}")
    missing = next((f for f in found if isinstance(f, PatchError)), None)
    if missing is not None:
        raise missing
    changes = []
    for rel, edits in by_file(renderer).items():
        path, raw, lines, original = bases[rel]
        eol = newline_of(lines)
        for edit in edits:  # edits do not overlap, so each is found again after the others
            state, at = locate(lines, edit, str(path))
            if state == "patched":
                lines = revert_edit(lines, edit, at)
        unpatched = join_lines(lines).encode("utf-8", errors="surrogateescape")
        if not revert:
            for edit in edits:
                lines = apply_edit(lines, edit, locate(lines, edit, str(path))[1], eol)
        new = unpatched if revert else join_lines(lines).encode("utf-8", errors="surrogateescape")
        if new != raw:
            changes.append(FileChange(path, raw, new, original if original is not None else unpatched))
    return changes


def _stray_marks(lines, edits: list[Edit], path: Path) -> list[int]:
    """Line numbers ending in MARK that none of ``edits``, found patched, accounts for."""
    ours = set()
    for edit in edits:
        try:
            state, at = locate(lines, edit, str(path))
        except PatchError:
            continue
        if state == "patched":
            ours.update(range(at, at + len(edit.patched)))
    return [i + 1 for i, (content, _) in enumerate(lines) if content.endswith(MARK) and i not in ours]


def write(changes: list[FileChange]) -> None:
    """Write every change through a temporary file beside it, replacing the originals only at the end.

    The files are written as one set by :func:`se4lip_features.atomic.replacing`: if a replacement fails (or a
    signal stops it), the files already replaced get their old bytes back before the error is raised, so a
    checkout is never left half patched (or half reverted). A symlinked file keeps its link (its target is
    rewritten) and its mode; new files get 0644. Removals come last, and take the folders they leave empty
    with them.
    """
    from se4lip_features import atomic  # here: se4lip-patch has the package; a checkout's copy never writes

    writes = [change for change in changes if change.new is not None]
    reals = [Path(os.path.realpath(change.path)) if change.old is not None else change.path for change in writes]
    with atomic.replacing(*reals) as temps:
        for tmp, real, change in zip(temps, reals, writes):
            tmp.write_bytes(change.new)
            if change.old is None:
                os.chmod(tmp, 0o644)
            else:
                shutil.copymode(real, tmp)
    removed = [change.path for change in changes if change.new is None]
    for path in removed:
        path.unlink()
    for folder in sorted({p.parent for p in removed}, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: something that is not ours is there
            folder.rmdir()


def diff(changes: list[FileChange], root: Path) -> str:
    """The unified diff of the renderer's files; the adapters' own files written or removed, one line each."""
    out = []
    for change in changes:
        rel = change.path.relative_to(root).as_posix()
        if change.old is None or change.new is None:
            out.append(f"{'new' if change.old is None else 'removed'} file {rel} (se4lip-features' adapters, MIT)")
            continue
        old = [c for c, _ in split_lines(change.old.decode("utf-8", errors="surrogateescape"))]
        new = [c for c, _ in split_lines(change.new.decode("utf-8", errors="surrogateescape"))]
        out.extend(difflib.unified_diff(old, new, f"a/{rel}", f"b/{rel}", lineterm=""))
    return "\n".join(out) + ("\n" if out else "")


def checkout_commit(root: Path) -> str | None:
    """The checkout's git HEAD, or None when it is not the top of a git work tree (or git is not installed).

    A renderer vendored inside another repository is not at that repository's HEAD: None, not its commit.
    """
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], check=False,
                              capture_output=True, text=True)
    except FileNotFoundError:
        return None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return None
    return lines[1]


