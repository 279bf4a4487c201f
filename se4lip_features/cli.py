"""Command-line tools: each is a ``<tool>_parser()`` and a ``<tool>_main(argv=None) -> int`` exit status."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from . import audio, extract, weights

FEATURES_SUFFIX = "_se4lip.npy"  # aud.wav -> aud_se4lip.npy (+ aud_se4lip.json), like SyncTalk's aud_ds.npy
MEDIA_SUFFIXES = audio.AUDIO_SUFFIXES | audio.VIDEO_SUFFIXES  # what a folder given as input is searched for


def _error(prog: str, message: object) -> None:
    """Report one problem as one line on stderr (printed above any progress bar)."""
    tqdm.write(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


def extract_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="se4lip-extract",
        description="Per-video-frame SE4Lip speech features for talking-head renderers: one float32 .npy "
                    "(rows = video frames) and a .json sidecar per input.",
        epilog="Outputs are <name>_se4lip.npy beside each input unless -o is given. Existing outputs are "
               "never overwritten without --force. Exit status: 0 when every input was extracted, 1 when any "
               "failed (each failure is one line on stderr), 2 for bad arguments.",
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="audio files (wav, flac, ogg, mp3, ...), videos (mp4, mov, mkv, ...; their audio "
                             "track is used), or folders, meaning every audio and video file directly in them")
    parser.add_argument("-o", "--output", type=Path, metavar="PATH",
                        help="one input file: the .npy to write, or a folder to write <name>_se4lip.npy into; "
                             "several inputs or a folder: the folder to write into (created if missing)")
    parser.add_argument("--weights", metavar="NAME_OR_PATH",
                        help="a released name, a .safetensors file or hf://owner/repo/file.safetensors[@revision] "
                             f"(default: the bundled {weights.DEFAULT_NAME})")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--fps", type=_positive_float, default=25.0,
                        help="video frame rate; one feature row per frame (default: %(default)g)")
    parser.add_argument("--layout", choices=list(extract.LAYOUTS), default="ds",
                        help="ds: [N, 16, 512] like DeepSpeech (default); hubert: [N, 2, 512]; ave: [N, 1, 512]")
    parser.add_argument("--batch-size", type=_positive_int, default=extract.DEFAULT_BATCH, metavar="N",
                        help="speech windows per encoder call (default: %(default)s)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    return parser


def extract_main(argv: list[str] | None = None) -> int:
    """``se4lip-extract``; returns the exit status. A failing input is reported and the others still run."""
    parser = extract_parser()
    args = parser.parse_args(argv)
    jobs, failed = _extract_jobs(args.inputs, args.output, parser.prog)
    if not jobs:
        return 1
    try:
        extractor = extract.load(args.weights, args.device)
    except (weights.WeightsError, ValueError) as err:
        _error(parser.prog, err)
        return 1
    tty = sys.stderr.isatty()  # progress bars only for a person watching, never in logs
    for source, target in tqdm(jobs, desc=parser.prog, unit="file", disable=not tty or len(jobs) < 2):
        try:
            meta = extract.extract_file(source, target, extractor=extractor, fps=args.fps, layout=args.layout,
                                        batch_size=args.batch_size, force=args.force,
                                        progress=tty and len(jobs) == 1)
        except (audio.AudioError, OSError) as err:  # this input only (bad audio, output exists, disk full)
            _error(parser.prog, err)
            failed += 1
            continue
        tqdm.write(f"{target}: {meta['n_frames']} frames x {meta['window']} x {meta['dim']}", file=sys.stdout)
    return 1 if failed else 0


def _extract_jobs(inputs: list[Path], output: Path | None, prog: str) -> tuple[list[tuple[Path, Path]], int]:
    """Pair each input file with its output path; report and count the inputs that cannot be used.

    Returns
    -------
    jobs : (input file, output .npy) pairs, each input file once, no two with the same output
    failed : number of problems reported
    """
    failed = 0
    sources: dict[Path, Path] = {}  # resolved -> as given, so a file named twice is extracted once
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES and not p.name.startswith("."))
            if not found:
                _error(prog, f"{item}: folder holds no audio or video files (looked for "
                             f"{', '.join(sorted(MEDIA_SUFFIXES))})")
                failed += 1
            for path in found:
                sources.setdefault(path.resolve(), path)
        elif item.exists():
            sources.setdefault(item.resolve(), item)
        else:
            _error(prog, f"{item}: no such file or folder")
            failed += 1

    several = len(inputs) > 1 or any(item.is_dir() for item in inputs)
    to_file = output is not None and output.suffix == ".npy"
    if to_file and several:
        _error(prog, f"-o {output}: several inputs need a folder to write into, not a .npy file")
        return [], failed + 1
    if output is not None and not to_file and output.exists() and not output.is_dir():
        _error(prog, f"-o {output}: exists and is not a folder; name a .npy file or a folder")
        return [], failed + 1

    jobs: list[tuple[Path, Path]] = []
    claimed: dict[Path, Path] = {}  # resolved output -> the input writing it
    for source in sources.values():
        if output is None:
            target = source.with_name(source.stem + FEATURES_SUFFIX)
        elif to_file:
            target = output
        else:
            target = output / (source.stem + FEATURES_SUFFIX)
        if target.resolve() in claimed:
            _error(prog, f"{source}: its output {target} would also be written from {claimed[target.resolve()]}; "
                         "rename one or extract them separately")
            failed += 1
            continue
        claimed[target.resolve()] = source
        jobs.append((source, target))
    return jobs, failed
