"""se4lip-patch: anchored, reversible insertions that let SyncTalk and TalkingGaussian use SE4Lip features.

Each edit finds a few anchor lines of the renderer's own code (exactly, and exactly once) and inserts lines
ending in ``# se4lip-patch`` that call ``se4lip_features.adapters.<renderer>``; the logic stays in this
package and none of the renderers' code is copied. Reverting removes those lines (and restores the one
line an edit may rewrite), so a patch followed by a revert gives the original bytes back; line endings
are kept. Every file is checked before any is written: an anchor that is missing changes nothing.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MARK = "# se4lip-patch"

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


def _marked(indent: str, *lines: str) -> tuple[New, ...]:
    return tuple(New(f"{indent}{line}  {MARK}") for line in lines)


def insert_after(path, what, anchor, lines, scope=None) -> Edit:
    return Edit(path, what, tuple(anchor), tuple(range(len(anchor))) + lines, scope)


def insert_before(path, what, anchor, lines, scope=None) -> Edit:
    return Edit(path, what, tuple(anchor), lines + tuple(range(len(anchor))), scope)


def insert_at(path, what, anchor, at, lines, scope=None) -> Edit:
    """Insert between anchor lines ``at - 1`` and ``at``."""
    keep = tuple(range(len(anchor)))
    return Edit(path, what, tuple(anchor), keep[:at] + lines + keep[at:], scope)


ST_IMPORT = "from se4lip_features.adapters import synctalk as se4lip_synctalk"
TG_IMPORT = "from se4lip_features.adapters import talkinggaussian as se4lip_tg"

SYNCTALK = Renderer("ZiqiaoPeng/SyncTalk", "d2427a3d7301234ca417ef7660aaf5a24e5d89b0", (
    insert_after(
        "main.py", "the --asr_model argument",
        ["    parser.add_argument('--asr_model', type=str, default='deepspeech')"],
        _marked("    ", ST_IMPORT, "se4lip_synctalk.add_arguments(parser)")),
    insert_at(
        "nerf_triplane/network.py", "the audio_in_dim choice in NeRFNetwork.__init__",
        ["        elif 'hubert' in self.opt.asr_model:",
         "            self.audio_in_dim = 1024",
         "        else:",
         "            self.audio_in_dim = 32"], 2,
        _marked("        ", "elif self.opt.asr_model == 'se4lip':")
        + _marked("            ", ST_IMPORT, "self.audio_in_dim = se4lip_synctalk.feature_dim(self.opt)"),
        scope="class NeRFNetwork(NeRFRenderer):"),
    insert_after(
        "nerf_triplane/network.py", "the AudioNet construction in NeRFNetwork.__init__",
        ["        else:",
         "            self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)"],
        _marked("        ", ST_IMPORT, "se4lip_synctalk.guard_checkpoints(self.audio_net, self.opt)"),
        scope="class NeRFNetwork(NeRFRenderer):"),
    insert_before(
        "nerf_triplane/provider.py", "the self-driven fallback to aud.npy in NeRFDataset.__init__",
        ["                else:",
         "                    aud_features = np.load(os.path.join(self.root_path, 'aud.npy'))"],
        _marked("                ", "elif self.opt.asr_model == 'se4lip':")
        + _marked("                    ", ST_IMPORT, "aud_features = se4lip_synctalk.load_features(self.opt)"),
        scope="class NeRFDataset:"),
    insert_before(
        "nerf_triplane/provider.py", "the cross-driven np.load(self.opt.aud) in NeRFDataset.__init__",
        ["                else:",
         "                    try:",
         "                        aud_features = np.load(self.opt.aud)"],
        _marked("                ", "elif self.opt.asr_model == 'se4lip':")
        + _marked("                    ", ST_IMPORT, "aud_features = se4lip_synctalk.load_features(self.opt)"),
        scope="class NeRFDataset:"),
    insert_before(
        "nerf_triplane/utils.py", "the end of Trainer.test",
        ['        self.log(f"==> Finished Test.")'],
        _marked("        ", "if self.opt.asr_model == 'se4lip':")
        + _marked("            ", ST_IMPORT,
                  "se4lip_synctalk.mux_audio(self.opt, os.path.join(save_path, f'{name}.mp4'))"),
        scope="    def test(self, loader, save_path=None, name=None, write_image=False):"),
))

_TG_DIM = ["        elif 'hubert' in args.audio_extractor:",
           "            self.audio_in_dim = 1024",
           "        else:",
           "            raise NotImplementedError"]
_TG_DIM_LINES = (_marked("        ", "elif args.audio_extractor == 'se4lip':")
                 + _marked("            ", TG_IMPORT, "self.audio_in_dim = se4lip_tg.feature_dim(args)"))
_TG_NET = ["        self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)"]
_TG_NET_LINES = _marked("        ", TG_IMPORT, "se4lip_tg.guard_checkpoints(self.audio_net, args)")

TALKINGGAUSSIAN = Renderer("Fictionarry/TalkingGaussian", "9bd34f732e30cd94c0a9a087a125d2dda228e258", (
    insert_after(
        "arguments/__init__.py", "the end of ModelParams.__init__",
        ['        super().__init__(parser, "Loading Parameters", sentinel)'],
        _marked("        ", TG_IMPORT, "se4lip_tg.add_arguments(parser)")),
    insert_before(
        "arguments/__init__.py", "the return of get_combined_args",
        ["    return Namespace(**merged_dict)"],
        _marked("    ", TG_IMPORT, "se4lip_tg.keep_saved_feature(merged_dict, vars(args_cfgfile), cmdlne_string)"),
        scope="def get_combined_args(parser : ArgumentParser):"),
    insert_at("scene/motion_net.py", "the audio_in_dim choice in MotionNetwork.__init__", _TG_DIM, 2,
              _TG_DIM_LINES, scope="class MotionNetwork(nn.Module):"),
    insert_after("scene/motion_net.py", "the AudioNet construction in MotionNetwork.__init__", _TG_NET,
                 _TG_NET_LINES, scope="class MotionNetwork(nn.Module):"),
    insert_at("scene/motion_net.py", "the audio_in_dim choice in MouthMotionNetwork.__init__", _TG_DIM, 2,
              _TG_DIM_LINES, scope="class MouthMotionNetwork(nn.Module):"),
    insert_after("scene/motion_net.py", "the AudioNet construction in MouthMotionNetwork.__init__", _TG_NET,
                 _TG_NET_LINES, scope="class MouthMotionNetwork(nn.Module):"),
    Edit(
        "scene/dataset_readers.py", "the self-driven feature load in readCamerasFromTransforms",
        ("        if audio_file == '':",),
        _marked("        ", "if audio_extractor == 'se4lip':")
        + _marked("            ", TG_IMPORT,
                  "aud_features = se4lip_tg.load_features(path, audio_file, len(frames), transformsfile)")
        + (Swap(0, f"        elif audio_file == '':  {MARK}"),),
        scope="def readCamerasFromTransforms(path, transformsfile, white_background, extension=\".jpg\", "
              "audio_file='', audio_extractor='deepspeech', preload=True):"),
))

RENDERERS = {"synctalk": SYNCTALK, "talkinggaussian": TALKINGGAUSSIAN}


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
    old: bytes
    new: bytes


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


def plan(renderer: Renderer, root: Path, revert: bool = False) -> list[FileChange]:
    """The files that patching (or reverting) would change, with their new bytes; nothing is written.

    Raises PatchError, before anything is written, when any anchor is missing or ambiguous, or when a
    file holds ``# se4lip-patch`` lines that are not this version's edits (they could not be reverted).
    """
    if not root.is_dir():
        raise PatchError(f"{root}: not a directory")
    changes = []
    for rel, edits in by_file(renderer).items():
        path = root / rel
        raw, text = read_text(path)
        lines = split_lines(text)
        eol = newline_of(lines)
        ours, missing = set(), None
        for edit in edits:
            try:
                state, at = locate(lines, edit, str(path))
            except PatchError as err:
                missing = missing or err
                continue
            if state == "patched":
                ours.update(range(at, at + len(edit.patched)))
        stray = [i + 1 for i, (content, _) in enumerate(lines) if content.endswith(MARK) and i not in ours]
        if stray:  # checked first: a hand-edited patch also hides its anchors
            raise PatchError(f"{path}: lines {stray} end in {MARK!r} but are not edits of this version of "
                             "se4lip-patch (edited by hand, or patched by another version); restore the file "
                             "(e.g. git checkout) and patch again")
        if missing is not None:
            raise missing
        for edit in edits:  # edits do not overlap, so each is found again after the others
            state, at = locate(lines, edit, str(path))
            if revert and state == "patched":
                lines = revert_edit(lines, edit, at)
            elif not revert and state == "unpatched":
                lines = apply_edit(lines, edit, at, eol)
        new = join_lines(lines).encode("utf-8", errors="surrogateescape")
        if new != raw:
            changes.append(FileChange(path, raw, new))
    return changes


def write(changes: list[FileChange]) -> None:
    """Write every change through a temporary file beside it, replacing the originals only at the end."""
    staged = []
    try:
        for change in changes:
            fd, tmp = tempfile.mkstemp(prefix=change.path.name + ".", suffix=".se4lip-tmp", dir=change.path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(change.new)
            shutil.copymode(change.path, tmp)
            staged.append((tmp, change.path))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def diff(changes: list[FileChange], root: Path) -> str:
    out = []
    for change in changes:
        rel = change.path.relative_to(root).as_posix()
        old = [c for c, _ in split_lines(change.old.decode("utf-8", errors="surrogateescape"))]
        new = [c for c, _ in split_lines(change.new.decode("utf-8", errors="surrogateescape"))]
        out.extend(difflib.unified_diff(old, new, f"a/{rel}", f"b/{rel}", lineterm=""))
    return "\n".join(out) + ("\n" if out else "")


def checkout_commit(root: Path) -> str | None:
    """The checkout's git HEAD, or None when it is not a git work tree (or git is not installed)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=False,
                              capture_output=True, text=True)
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# -- command line --------------------------------------------------------------------------------------

def get_parser() -> argparse.ArgumentParser:
    verified = "; ".join(f"{name}: {r.repo}@{r.commit[:7]}" for name, r in RENDERERS.items())
    parser = argparse.ArgumentParser(
        prog="se4lip-patch",
        description="Patch a SyncTalk or TalkingGaussian checkout so that --audio_feature se4lip selects SE4Lip "
                    "features. The inserted lines end in '# se4lip-patch' and call se4lip_features.adapters.",
        epilog=f"Verified against {verified}. Exit status: 0 on success (for --check: patched), 1 otherwise.",
    )
    parser.add_argument("renderer", choices=sorted(RENDERERS), help="which renderer PATH is a checkout of")
    parser.add_argument("path", type=Path, metavar="PATH", help="the renderer checkout (its top directory)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report whether PATH is patched; change nothing")
    mode.add_argument("--revert", action="store_true", help="remove the patch, restoring the files byte for byte")
    parser.add_argument("--dry-run", action="store_true", help="print the diff instead of writing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.check and args.dry_run:
        parser.error("--check changes nothing already; use it without --dry-run")
    renderer = RENDERERS[args.renderer]
    root = args.path
    try:
        if args.check:
            return _check(renderer, root)
        changes = plan(renderer, root, revert=args.revert)
    except PatchError as err:
        print(f"se4lip-patch: error: {err}\nNothing was changed.", file=sys.stderr)
        return 1
    if args.dry_run:
        sys.stdout.write(diff(changes, root))
        return 0
    try:
        write(changes)
    except OSError as err:
        print(f"se4lip-patch: error: {err}", file=sys.stderr)
        return 1
    done = "reverted" if args.revert else "patched"
    if not changes:
        print(f"{root}: already {'unpatched' if args.revert else 'patched'}; nothing to do")
    else:
        print(f"{root}: {done} {len(changes)} files: " + ", ".join(c.path.relative_to(root).as_posix()
                                                                 for c in changes))
    if not args.revert:
        _note_commit(renderer, root)
    return 0


def _check(renderer: Renderer, root: Path) -> int:
    if not root.is_dir():
        raise PatchError(f"{root}: not a directory")
    states = status(renderer, root)
    for edit, state in states:
        print(f"{edit.path}: {edit.what}: {state if state in ('patched', 'unpatched') else 'ERROR ' + state}")
    if all(state == "patched" for _, state in states):
        print(f"{root}: patched")
        return 0
    if all(state == "unpatched" for _, state in states):
        print(f"{root}: not patched")
    else:
        print(f"{root}: not (fully) patched")
    return 1


def _note_commit(renderer: Renderer, root: Path) -> None:
    head = checkout_commit(root)
    if head is not None and head != renderer.commit:
        print(f"note: the anchors matched, but the patch was verified against {renderer.repo}@{renderer.commit[:7]} "
              f"and this checkout is at {head[:7]}")


if __name__ == "__main__":
    sys.exit(main())
