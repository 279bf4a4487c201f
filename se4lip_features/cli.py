"""Command-line tools: each is a ``<tool>_parser()`` and a ``<tool>_main(argv=None) -> int`` exit status."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from . import audio, extract, frames, weights
from .tool import error, fail, holding, setup_logging, tool, usage

FEATURES_SUFFIX = "_se4lip.npy"  # aud.wav -> aud_se4lip.npy (+ aud_se4lip.json), like SyncTalk's aud_ds.npy
MEDIA_SUFFIXES = audio.AUDIO_SUFFIXES | audio.VIDEO_SUFFIXES  # what a folder given as input is searched for


def _number(name: str, kind, ok, rule: str):
    """An argparse type: ``kind(text)`` if ``ok`` accepts it, else the usage error "must be RULE, got TEXT".

    ``name`` is what argparse calls it when ``kind`` cannot read the text ("invalid _positive_int value").
    """
    def parse(text: str):
        value = kind(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = name
    return parse


_positive_int = _number("_positive_int", int, lambda v: v >= 1, "at least 1")
_nonnegative_int = _number("_nonnegative_int", int, lambda v: v >= 0, "0 or more")
_fraction = _number("_fraction", float, lambda v: 0 < v < 1, "between 0 and 1")
_positive_float = _number("_positive_float", float, lambda v: 0 < v < math.inf, "positive and finite")
_fps = _number("_fps", float, lambda v: 0 < v <= frames.MAX_FPS, f"positive and at most {frames.MAX_FPS:g}")


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
    parser.add_argument("--fps", type=_fps, default=25.0,
                        help="video frame rate; one feature row per frame (default: %(default)g)")
    parser.add_argument("--layout", choices=list(frames.LAYOUTS), default="ds",
                        help="ds: [N, 16, 512] like DeepSpeech (default); hubert: [N, 2, 512]; ave: [N, 1, 512]")
    parser.add_argument("--batch-size", type=_positive_int, default=frames.DEFAULT_BATCH, metavar="N",
                        help="speech windows per encoder call (default: %(default)s)")
    _add_precision_flag(parser)
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    return parser


def _add_precision_flag(parser) -> None:
    parser.add_argument("--precision", choices=extract.PRECISIONS, default="fp32",
                        help="bf16: the CPU fast path for CPUs with AVX-512 BF16 or AMX (the GRU's matmuls, or "
                             "the CNN's convolutions, in bf16 with fp32 accumulation); held-out sync accuracy and "
                             "landmark error as in fp32, see the README's performance section (default: "
                             "%(default)s)")


@tool("se4lip-extract")
def extract_main(argv: list[str] | None = None) -> int:
    """``se4lip-extract``; returns the exit status. A failing input is reported and the others still run."""
    parser = extract_parser()
    args = parser.parse_args(argv)
    jobs, failed = _extract_jobs(args.inputs, args.output, parser.prog)
    if not jobs:
        return 1
    try:
        extractor = extract.load(args.weights, args.device, precision=args.precision)
    except (weights.WeightsError, ValueError) as err:
        error(parser.prog, err)
        return 1
    tty = sys.stderr.isatty()  # progress bars only for a person watching, never in logs
    for source, target in tqdm(jobs, desc=parser.prog, unit="file", disable=not tty or len(jobs) < 2):
        try:
            meta = extract.extract_file(source, target, extractor=extractor, fps=args.fps, layout=args.layout,
                                        batch_size=args.batch_size, force=args.force,
                                        progress=tty and len(jobs) == 1)
        except (audio.AudioError, OSError, ValueError) as err:  # this input only (bad audio, output exists,
            # disk full, features that are not finite)
            error(parser.prog, err)
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
            found = audio.folder_files(item, MEDIA_SUFFIXES)
            if not found:
                error(prog, f"{item}: folder holds no audio or video files (looked for "
                             f"{', '.join(sorted(MEDIA_SUFFIXES))})")
                failed += 1
            for path in found:
                sources.setdefault(path.resolve(), path)
        elif item.exists():
            sources.setdefault(item.resolve(), item)
        else:
            error(prog, f"{item}: no such file or folder")
            failed += 1

    several = len(inputs) > 1 or any(item.is_dir() for item in inputs)
    to_file = output is not None and output.suffix.lower() == ".npy"  # -o UP.NPY names a file, not a folder
    if to_file and several:
        error(prog, f"-o {output}: several inputs need a folder to write into, not a .npy file")
        return [], failed + 1
    if output is not None and not to_file and output.exists() and not output.is_dir():
        error(prog, f"-o {output}: exists and is not a folder; name a .npy file or a folder")
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
        if target.resolve() == source.resolve():
            error(prog, f"{source}: would be overwritten by its own features; choose another -o")
            failed += 1
            continue
        if target.resolve() in claimed:
            error(prog, f"{source}: its output {target} would also be written from {claimed[target.resolve()]}; "
                         "rename one or extract them separately")
            failed += 1
            continue
        claimed[target.resolve()] = source
        jobs.append((source, target))
    return jobs, failed


# ---------------------------------------------------------------------------------------------- prepare


def prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="se4lip-prepare",
        description="Turn talking-head videos (or a SyncTalk/TalkingGaussian data folder) into a training set of "
                    "16 kHz audio and lip crops.")
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="videos, folders of videos, or renderer data folders (aud.wav + ori_imgs/*.jpg/.lms)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output dataset folder")
    parser.add_argument("--fps", type=_fps, default=25.0, help="video rate the frames are resampled to")
    parser.add_argument("--crop", type=_positive_int, nargs=2, default=(48, 96), metavar=("H", "W"),
                        help="lip crop size")
    parser.add_argument("--crop-scale", type=_positive_float, default=1.2,
                        help="crop width as a multiple of the outer-eye-corner distance")
    parser.add_argument("--segment", type=_positive_float, default=10.0,
                        help="seconds per clip: longer videos are cut, so the validation split can hold some out")
    parser.add_argument("-f", "--force", action="store_true",
                        help="replace an existing output folder, if it is a dataset written by se4lip-prepare")
    return parser


@tool("se4lip-prepare", training_env=True)
def prepare_main(argv=None) -> int:
    parser = prepare_parser()
    args = parser.parse_args(argv)
    return holding(parser.prog, args.out, _prepare, parser, args)


def _prepare(parser, args) -> int:
    setup_logging(parser.prog)
    from .training import data

    if args.out.exists() and not args.force:
        return fail(parser.prog, f"{args.out}: exists (use --force to replace it)")
    if args.out.exists() and not data.is_prepared(args.out):
        return fail(parser.prog, f"{args.out}: exists and is not a dataset written by se4lip-prepare, so --force "
                                  "does not replace it; remove it yourself or choose another -o")
    inside = [p for p in args.inputs if args.out.resolve() in (p.resolve(), *p.resolve().parents)]
    if inside:
        return fail(parser.prog, f"{inside[0]}: is inside the output folder {args.out}; choose another -o")
    try:
        meta = data.prepare_inputs(args.inputs, args.out, fps=args.fps, height=args.crop[0], width=args.crop[1],
                                   scale=args.crop_scale, segment_s=args.segment, progress=sys.stderr.isatty())
    except (OSError, ValueError, ImportError) as err:
        return fail(parser.prog, err)
    clips = meta["clips"]
    print(f"{args.out}: {len(clips)} clips, {sum(c['n_frames'] for c in clips)} frames, "
          f"{sum(c['n_dropped'] for c in clips)} without a face (dropped from training)")
    return 0


# ------------------------------------------------------------------------------------------------ train


def train_parser() -> argparse.ArgumentParser:
    from .model import FRONT_ENDS, SPEECH_ENCODERS, ModelConfig
    from .training.train import TrainConfig

    parser = argparse.ArgumentParser(prog="se4lip-train",
                                     description="Train SE4Lip, or fine-tune shipped weights, on a prepared dataset.")
    parser.add_argument("data", type=Path, nargs="+",
                        help="dataset folders written by se4lip-prepare (several: trained together, each holding "
                             "out its own --val-clips)")
    parser.add_argument("-o", "--out", type=Path, help="run folder (default: <first data>-se4lip-run)")
    parser.add_argument("--init", help="start from these weights (name, .safetensors path or hf://): fine-tuning")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/ckpt.pt")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--stop-at", type=_positive_int, metavar="STEP",
                        help="stop at this step with a checkpoint (the schedule still spans --steps); resume later")
    recipe = parser.add_argument_group("recipe (defaults: the shipped weights' recipe, see weights/MODEL_CARD.md)")
    for field in _recipe_fields(TrainConfig):
        _add_field_flag(recipe, field)
    model = parser.add_argument_group("model (ignored with --init; lip crop size and fps come from the data); "
                                      "the default is the default weights' Mel + CNN; "
                                      "--front-end stft --speech-encoder gru is the paper's design")
    choices = {"front_end": FRONT_ENDS, "speech_encoder": SPEECH_ENCODERS}
    for field in dataclasses.fields(ModelConfig):
        if field.name in MODEL_FLAGS:
            _add_field_flag(model, field, choices.get(field.name))
    return parser


# the rest of ModelConfig follows the data and the front end
MODEL_FLAGS = ("embed_dim", "gru_hidden", "gru_layers", "window_frames", "front_end", "speech_encoder", "level_norm")


def _recipe_fields(config) -> list:
    """The fields of a config dataclass with those of its nested configs in place (TrainConfig.loss's)."""
    return [sub for field in dataclasses.fields(config)
            for sub in (_recipe_fields(field.default_factory) if dataclasses.is_dataclass(field.default_factory)
                        else [field])]


def _recipe(config, values: dict):
    """``config`` built from parsed flags: each field from its flag, a nested config from its own."""
    return config(**{f.name: _recipe(f.default_factory, values) if dataclasses.is_dataclass(f.default_factory)
                     else values[f.name] for f in dataclasses.fields(config)})


def _add_field_flag(group, field, choices=None) -> None:
    """A --flag for a config dataclass field, with its default."""
    flag = "--" + field.name.replace("_", "-")
    if isinstance(field.default, bool):
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
    else:
        group.add_argument(flag, type=type(field.default), default=field.default, choices=choices,
                           metavar=None if choices else field.name.upper(), help="(default: %(default)s)")


@tool("se4lip-train", training_env=True)
def train_main(argv=None) -> int:
    parser = train_parser()
    args = parser.parse_args(argv)
    out = args.out or args.data[0].with_name(args.data[0].name + "-se4lip-run")
    return holding(parser.prog, out, _train, parser, args, out)


def _train(parser, args, out: Path) -> int:
    from .model import ModelConfig
    from .training.train import TrainConfig, train

    setup_logging(parser.prog)
    values = vars(args)
    try:
        cfg = _recipe(TrainConfig, values)
        model_cfg = ModelConfig(**{name: values[name] for name in MODEL_FLAGS})
    except ValueError as err:
        return usage(parser.prog, f"--{str(err).replace('_', '-')}")
    if (out / "ckpt.pt").exists() and not args.resume:
        return fail(parser.prog, f"{out}: holds a checkpoint; pass --resume to continue it or -o for a new run")
    if not args.resume and out.is_dir() and any(out.iterdir()):  # a finished run, or not a run at all
        return fail(parser.prog, f"{out}: exists and is not empty; a new run goes into a new or empty folder (-o)")
    if out.exists() and not out.is_dir():
        return fail(parser.prog, f"-o {out}: exists and is not a folder")
    if args.resume and not (out / "ckpt.pt").is_file():
        return fail(parser.prog, f"{out / 'ckpt.pt'}: no checkpoint to resume; start the run without --resume")
    created = not out.exists()
    try:
        history = train(args.data, out, cfg, model_cfg, init=args.init, resume=args.resume, device=args.device,
                        stop_at=args.stop_at, progress=sys.stderr.isatty())
    except (OSError, ValueError, weights.WeightsError, FloatingPointError) as err:
        if created and out.is_dir() and set(os.listdir(out)) <= {"split.json"}:  # nothing of the run to keep
            shutil.rmtree(out)
        return fail(parser.prog, err)
    done = (out / "final.safetensors").exists() and history["step"][-1] == cfg.steps
    accuracy = f", validation sync accuracy {history['val_acc'][-1]:.3f}" if history["val_acc"] else ""
    print(f"{out}: step {history['step'][-1]} of {cfg.steps}{accuracy}; "
          + (f"weights in {out / 'final.safetensors'}" if done else "continue with --resume"))
    return 0


# ------------------------------------------------------------------------------------------------- eval


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="se4lip-eval", description="Measure SE4Lip weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    sync = sub.add_parser("sync", help="audio-visual offset of each clip (SyncNet-style) and accuracy over the set")
    sync.add_argument("inputs", nargs="+", type=Path, help="videos, folders of videos, or a prepared dataset folder")
    sync.add_argument("--weights", help="weights name, .safetensors path or hf:// (default: bundled)")
    sync.add_argument("--ids", type=Path,
                      help="with a prepared dataset: a JSON file {'val': [ids]} (a run's split.json) or one id a line")
    sync.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    _add_precision_flag(sync)
    sync.add_argument("-o", "--out", dest="out_text", help="JSON output (default: stdout)")
    sync.add_argument("--plot", type=Path, help="folder for one distance-vs-shift PNG per clip")
    _add_lmd_arguments(sub.add_parser(
        "lmd", help="renderer-proxy landmark probe: LMD and mouth-opening r of feature types on held-out clips",
        description="Renderer-proxy landmark probe: how well a renderer's audio path predicts mouth landmarks "
                    "from each feature type."))
    return parser


@tool("se4lip-eval", training_env=True)
def eval_main(argv=None) -> int:
    args = eval_parser().parse_args(argv)
    if args.command == "lmd":  # two probes into one folder would mix their probe.json and plots
        return holding("se4lip-eval lmd", args.out, _eval_lmd, args)
    args.out = Path(args.out_text) if args.out_text else None
    setup_logging("se4lip-eval")
    if args.out is None:
        return _eval_sync(args)
    return holding("se4lip-eval", args.out, _eval_sync, args)


def _eval_sync(args) -> int:
    import tempfile

    from . import atomic, evaluate
    from .training.data import open_inputs, read_ids

    # Every argument is checked before any work, so results are never computed and then lost.
    wanted = None
    if args.ids is not None:
        try:
            wanted = read_ids(args.ids)
        except (OSError, ValueError) as err:
            return fail("se4lip-eval", f"--ids {err}")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        return fail("se4lip-eval", f"-o {args.out}: " + ("is a folder; name the JSON file to write"
                                                           if args.out.is_dir() else "its folder does not exist"))
    if args.out is not None and args.out_text.endswith(os.sep):  # Path("new/") drops the slash: a folder was meant
        return fail("se4lip-eval", f"-o {args.out_text}: names a folder; name the JSON file to write")
    if args.out is not None and not os.access(args.out.parent, os.W_OK):
        return fail("se4lip-eval", f"-o {args.out}: its folder is not writable")
    if args.plot is not None and args.plot.exists() and not args.plot.is_dir():
        return fail("se4lip-eval", f"--plot {args.plot}: exists and is not a folder")
    if args.plot is not None:
        existing = next(p for p in (args.plot, *args.plot.parents) if p.exists())
        if not os.access(existing, os.W_OK):
            return fail("se4lip-eval", f"--plot {args.plot}: {existing} is not writable")
    try:
        extractor = extract.load(args.weights, args.device, precision=args.precision)
    except (weights.WeightsError, ValueError) as err:
        return fail("se4lip-eval", err)
    cfg = extractor.config
    with tempfile.TemporaryDirectory() as tmp:
        try:
            data = open_inputs(args.inputs, Path(tmp) / "data", fps=cfg.fps, height=cfg.lip_height,
                               width=cfg.lip_width, scale=cfg.lip_crop_scale, segment_s=None,
                               progress=sys.stderr.isatty())
            clips = data.clips if wanted is None else data.select(wanted, f"--ids {args.ids}")
        except (OSError, ValueError, ImportError) as err:
            return fail("se4lip-eval", err)
        sync = evaluate.sync_set(extractor.model, evaluate.dataset_clips(data, clips), data.fps, embed=extractor.embed,
                                 progress=sys.stderr.isatty())
    results = sync["clips"]
    report = {"weights": extractor.name, "weights_sha256": extractor.sha256, "precision": args.precision,
              "summary": sync["summary"], "clips": results}
    text = json.dumps(report, indent=1)
    if args.out:
        atomic.write_text(args.out, text + "\n")
    else:
        print(text)
    if args.plot:
        evaluate.plot_sync(results, args.plot)
    s = report["summary"]
    for clip_id, r in results.items():
        if r["verdict"] in ("too short", "no lip window"):
            print(f"{clip_id}: {r['verdict']} ({r['reason']}), left out", file=sys.stderr)
        elif r["verdict"] == "no sync":
            print(f"{clip_id}: no sync (the audio matches no shift: silent?)", file=sys.stderr)
    if not s["n_clips"]:
        print("no clip could be measured", file=sys.stderr)
        return 1
    print(f"{s['n_clips']} clips: accuracy {s['accuracy']:.3f} (|offset| <= 1), exact {s['exact_accuracy']:.3f}, "
          + (f"mean offset {s['mean_offset']:+.2f} frames" if s["mean_offset"] is not None else "no offset")
          + (f"; {s['n_skipped']} left out" if s["n_skipped"] else ""), file=sys.stderr)
    return 0


def _add_lmd_arguments(p: argparse.ArgumentParser) -> None:
    from .analysis.probe import ProbeConfig

    p.add_argument("data", type=Path, help="prepared dataset folder (se4lip-prepare)")
    p.add_argument("features", nargs="+",
                   help="feature types: log-mel, mfcc, stft, whisper-tiny.en (the whisper extra), SE4Lip weights "
                        "(a released name, .safetensors) or se4lip-train ckpt.pt")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (probe.json, probe.md, probe.png)")
    p.add_argument("--seeds", type=_nonnegative_int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=_positive_int, default=ProbeConfig.steps)
    p.add_argument("--val-clips", type=_positive_int, default=60, help="held-out utterances (PreparedData.split)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--split", type=Path, help="split.json of a training run (its 'val' ids are held out)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads")
    _add_precision_flag(p)
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing probe.json")


def _eval_lmd(args) -> int:
    import torch

    from .analysis import probe
    from .training.data import PreparedData

    prog = "se4lip-eval lmd"
    if args.out.exists() and not args.out.is_dir():
        return fail(prog, f"-o {args.out}: exists and is not a folder")
    if (args.out / "probe.json").exists() and not args.force:
        return fail(prog, f"{args.out / 'probe.json'}: exists (use -f to overwrite)")
    if args.split is not None and not args.split.is_file():
        return fail(prog, f"--split {args.split}: no such file")
    setup_logging(prog)
    torch.set_num_threads(args.threads)
    try:
        data = PreparedData(args.data)
        specs = [probe.feature_extractor(s, precision=args.precision) for s in args.features]
        labels = probe.unique_labels(args.features, [label for label, _ in specs])
        specs = [(label, ex) for label, (_, ex) in zip(labels, specs)]
        train, held = probe.split_clips(data, args.val_clips, args.split_seed, args.split)
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        return fail(prog, err)
    cfg = probe.ProbeConfig(steps=args.steps)
    targets = probe.Targets.from_data(data, cfg.ref_eye_px)
    banks = (probe.FeatureBank.build(label, ex, data, progress=sys.stderr.isatty()) for label, ex in specs)
    result = probe.probe_all(banks, targets, train, held, args.seeds, cfg)
    result["split"]["rule"] = (f"the 'val' ids of {args.split}" if args.split else
                               f"PreparedData.split({args.val_clips}, seed={args.split_seed})")
    result.update(dataset=str(args.data), fps=data.fps)
    for path in probe.write_outputs(result, args.out):
        logging.getLogger(__name__).info("wrote %s", path)
    print(probe.markdown_table(result))
    return 0


# --------------------------------------------------------------------------------------------- finetune


def finetune_parser() -> argparse.ArgumentParser:
    from .training.finetune import MAX_STEPS, MIN_STEPS, STEPS_PER_MINUTE, FinetuneConfig

    d = FinetuneConfig()
    parser = argparse.ArgumentParser(
        prog="se4lip-finetune",
        description="Fine-tune SE4Lip weights on one person's talking-head video, holding out the end of the video "
                    "and keeping the weights that sync it best.",
        epilog=f"Steps: {STEPS_PER_MINUTE} per minute of training video, at least {MIN_STEPS}, at most {MAX_STEPS} "
               "(unless --steps). The before/after held-out figures are printed and saved beside OUT as "
               "<stem>.finetune.json.")
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="a renderer data folder (aud.wav + ori_imgs/<i>.jpg + <i>.lms), a talking-head video, "
                             "or a dataset prepared by se4lip-prepare")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.safetensors", help="weights to write")
    parser.add_argument("--init",
                        help=f"starting weights: name, .safetensors or hf:// (default: {weights.DEFAULT_NAME})")
    parser.add_argument("--steps", type=_positive_int, help="training steps (default: from the video's length)")
    parser.add_argument("--holdout", type=_fraction, default=d.holdout,
                        help="share of the video held out, at its end (default: %(default)s)")
    parser.add_argument("--segment", type=_positive_float, default=d.segment_s,
                        help="seconds per segment, the units of the split and of sync (default: %(default)s)")
    parser.add_argument("--eval-every", type=_positive_int, default=d.train.val_every, metavar="STEPS",
                        help="steps between held-out evaluations (default: %(default)s)")
    parser.add_argument("--patience", type=_positive_int, default=d.patience, metavar="EVALS",
                        help="evaluations without improvement before stopping (default: %(default)s)")
    parser.add_argument("--lr", type=_positive_float, default=d.train.lr,
                        help="peak learning rate (default: %(default)s)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=d.train.bf16,
                        help="bf16 autocast (CPUs with AVX-512 BF16, and GPUs)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--work", type=Path,
                        help="folder to keep the prepared data in (default: a temporary folder)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite OUT and its report")
    return parser


@tool("se4lip-finetune", training_env=True)
def finetune_main(argv=None) -> int:
    parser = finetune_parser()
    args = parser.parse_args(argv)
    return holding(parser.prog, args.out, _finetune, parser, args)


def _finetune(parser, args) -> int:
    from .training.finetune import RECIPE, FinetuneConfig, finetune, report_path

    prog = parser.prog
    if args.out.suffix != ".safetensors":
        return fail(prog, f"-o {args.out}: name a .safetensors file")
    if args.out.stem in weights.REGISTRY:  # a file named like a release must be that release to load
        return fail(prog, f"-o {args.out}: {args.out.stem} is a released name, which only its own file may carry; "
                           "name your fine-tuned weights otherwise")
    for target in (args.out, report_path(args.out)):
        if target.exists() and not args.force:
            return fail(prog, f"{target}: exists (use --force to replace it)")
    if not args.input.exists():
        return fail(prog, f"{args.input}: no such file or folder")
    try:
        cfg = FinetuneConfig(steps=args.steps, holdout=args.holdout, segment_s=args.segment, patience=args.patience,
                             train=dataclasses.replace(RECIPE, val_every=args.eval_every, lr=args.lr, bf16=args.bf16))
        weights.resolve(args.init)
    except (ValueError, weights.WeightsError) as err:
        return fail(prog, err)
    setup_logging(prog)
    try:
        report = finetune(args.input, args.out, cfg, init=args.init, work=args.work, device=args.device,
                          progress=sys.stderr.isatty())
    except (OSError, ValueError, ImportError, weights.WeightsError) as err:
        return fail(prog, err)
    rows = [("sync accuracy (|offset| <= 1)", "accuracy"), ("exact (offset = 0)", "exact_accuracy"),
            ("mean confidence", "mean_confidence"), ("frame-level within 1", "frame_within1")]
    s, st = report["split"], report["steps"]
    print(f"{args.out}: {st['run']} of {st['planned']} steps, best at step {st['best']}"
          f"{' (the starting weights)' if st['best'] == 0 else ''}; held out {s['held_out_segments']} segments "
          f"({s['held_out_s']:.0f} s, {s['rule']})")
    print(f"{'':32}{'before':>8}{'after':>8}")
    for label, key in rows:
        print(f"{label:32}{report['before'][key]:8.3f}{report['after'][key]:8.3f}")
    print(f"report: {report_path(args.out)}")
    return 0
