"""se4lip-patch: make a renderer checkout accept ``--audio_feature se4lip`` (the command line).

The engine (anchors, insertion, revert, checks) is ``engine``; each renderer module holds its table of edits
(``RENDERER``) and the functions its inserted lines call. Every inserted line ends in ``# se4lip-patch``, and
imports ``se4lip_features`` only inside the branch taken when se4lip is the chosen feature. None of the
renderers' code is copied here: the tables hold only the anchor lines they look for.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from se4lip_features.tool import holding, tool

from . import ernerf, gaussiantalker, instag, radnerf, synctalk, talkinggaussian
from .engine import (
    MANIFEST,
    RUNTIME,
    PatchError,
    Renderer,
    checkout_commit,
    diff,
    manifest,
    plan,
    restore_record,
    runtime_changes,
    runtime_state,
    status,
    write,
)

RENDERERS = {module.__name__.rsplit(".", 1)[1]: module.RENDERER
             for module in (synctalk, talkinggaussian, ernerf, radnerf, gaussiantalker, instag)}


# The modules the inserted lines reach, written into the checkout as they are installed here: all of this
# package but patch.py (the command line), and the package's sidecar.py, the one feature reader.
RUNTIME_MODULES = ("common", "engine", "nerf", "live", "gaussian", *RENDERERS)


def runtime_files() -> dict[str, bytes]:
    """The files of ``<checkout>/se4lip_adapters/``: name -> bytes, taken from the installed package."""
    from se4lip_features import sidecar
    from se4lip_features.version import __version__

    here = Path(__file__).parent
    files = {"__init__.py": ('"""SE4Lip adapters written by se4lip-patch '
                             f'(se4lip-features {__version__}, MIT licence).\n\n'
                             "The patched lines import them from here when se4lip_features is not importable: they "
                             "read features with\nnumpy alone and run se4lip-extract ($SE4LIP_EXTRACT or PATH) to "
                             "extract. Do not edit; `se4lip-patch RENDERER\nPATH --revert` removes this folder.\n"
                             '"""\n').encode()}
    files.update({f"{name}.py": (here / f"{name}.py").read_bytes() for name in RUNTIME_MODULES})
    files["sidecar.py"] = Path(sidecar.__file__).read_bytes()
    files[MANIFEST] = manifest(files)
    return files


# -- command line --------------------------------------------------------------------------------------

def get_parser() -> argparse.ArgumentParser:
    verified = "\n".join(f"  {name:16} {r.repo}@{r.commit[:7]}" for name, r in RENDERERS.items())
    parser = argparse.ArgumentParser(
        prog="se4lip-patch",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # one renderer per line in the epilog
        description=textwrap.fill(
            "Patch a SyncTalk, TalkingGaussian, ER-NeRF, RAD-NeRF, GaussianTalker or InsTaG checkout so that "
            "--audio_feature se4lip selects SE4Lip features. The inserted lines end in '# se4lip-patch' and call "
            "se4lip_features.adapters only when se4lip is the chosen feature."),
        epilog=f"verified against:\n{verified}\n\nExit status: 0 on success (for --check: patched), 1 otherwise.",
    )
    parser.add_argument("renderer", choices=sorted(RENDERERS), help="which renderer PATH is a checkout of")
    parser.add_argument("path", type=Path, metavar="PATH", help="the renderer checkout (its top directory)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report whether PATH is patched; change nothing")
    mode.add_argument("--revert", action="store_true", help="remove the patch, restoring the files byte for byte")
    parser.add_argument("--dry-run", action="store_true", help="print the diff instead of writing it")
    return parser


@tool("se4lip-patch")
def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.check and args.dry_run:
        parser.error("--check changes nothing already; use it without --dry-run")
    # one se4lip-patch at a time per checkout: a patch and a revert at once would each stage the files as the
    # other found them, and the last to write would undo half of the first
    return holding(parser.prog, args.path, _run, args)


def _run(args) -> int:
    renderer = RENDERERS[args.renderer]
    root = args.path
    try:
        if args.check:
            return _check(renderer, root)
        changes = plan(renderer, root, revert=args.revert)
        record = None if args.revert else restore_record(root, changes)  # lets later versions revert it
        changes += runtime_changes(root, runtime_files(), revert=args.revert, restore=record)
    except PatchError as err:
        print(f"se4lip-patch: error: {err}\nNothing was changed.", file=sys.stderr)
        return 1
    if args.dry_run:
        sys.stdout.write(diff(changes, root))
        return 0
    try:
        write(changes)
    except OSError as err:  # write() has put back the files it had already replaced
        print(f"se4lip-patch: error: {err}\nNothing was changed.", file=sys.stderr)
        return 1
    done = "reverted" if args.revert else "patched"
    if not changes:
        print(f"{root}: already {'unpatched' if args.revert else 'patched'}; nothing to do")
    else:
        own = [c.path.relative_to(root).as_posix() for c in changes if c.path.parent.relative_to(root).parts[:1]
               != (RUNTIME,)]
        runtime = f"; {'removed' if args.revert else 'wrote'} {RUNTIME}/" if len(own) < len(changes) else ""
        print(f"{root}: {done} {len(own)} files: {', '.join(own)}{runtime}")
    if not args.revert:
        _note_commit(renderer, root)
    return 0


def _check(renderer: Renderer, root: Path) -> int:
    if not root.is_dir():
        raise PatchError(f"{root}: not a directory")
    states = status(renderer, root)
    for edit, state in states:
        print(f"{edit.path}: {edit.what}: {state if state in ('patched', 'unpatched') else 'ERROR ' + state}")
    runtime = runtime_state(root, runtime_files())
    print(f"{RUNTIME}/: the adapters for environments without se4lip_features: {runtime}")
    if all(state == "patched" for _, state in states) and runtime == "written":
        print(f"{root}: patched")
        return 0
    if all(state == "unpatched" for _, state in states) and runtime == "missing":
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
