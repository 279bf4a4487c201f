"""Generalisation evidence: sync and landmark-probe figures of log-mel and SE4Lip weights, per held-out set.

One command, every set (prepared under ``--data-root``, default /work/data; the commands are in REPORT.md's
generalisation section):
- ``grid_s1``: the held-out utterances of GRID s1 (``benchmarks/quality/heldout.json``), the shipped weights'
  own speaker;
- ``lrw_ar``: 1,600 30-frame Arabic clips of many TV speakers, held out by ``PreparedData.split(60, seed=0)``
  (also the held-out split of any ``se4lip-train`` run on them);
- ``wild``: six public in-the-wild talking-head clips (5-6.6 s; ``benchmarks/quality/wild.md``), all held
  out, sync only (too few frames to train a probe on);
- ``wild2``: nine more public recordings (eight people; English, French, German) cut into 34 clips of 8 s
  (``benchmarks/quality/wild.md``), all held out, sync only.

Per set and feature type: SyncNet-style sync figures (SE4Lip weights only: log-mel has no lip encoder; the
offset search scales to the clip, +-min(15, frames // 5), see ``evaluate.clip_sync``) and, unless ``--no-probe``,
the renderer-proxy landmark probe (LMD, mouth-opening r), trained on the set's own training clips. Writes
``generalise.json`` and ``generalise.md`` into ``--out``.

    python benchmarks/quality/generalise.py --weights se4lip-grid-s1-melcnn-v1 --no-probe --out /tmp/generalise
    # benchmarks/results/generalisation/generalise.{json,md}: run by benchmarks/quality/generalisation.sh
    python benchmarks/quality/generalise.py --data-root /work/data --threads 2 --weights se4lip-grid-s1-melcnn-v1 \
        se4lip-gridlrw-melcnn-v1 FINETUNED.safetensors --out benchmarks/results/generalisation
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from run import HERE, sync_accuracy  # benchmarks/quality/run.py: the held-out sync of one weights file

from se4lip_features.analysis import probe
from se4lip_features.training.data import PreparedData

# the probe's baselines: the best acoustic feature and a pretrained speech recogniser's encoder; every SE4Lip
# row is reported against the better of the two on each set
BASELINES = ("log-mel", "whisper-tiny.en")
# name -> (prepared dataset under --data-root, its held-out clips: a split.json of their ids, None for
# PreparedData.split(60, seed=0), or ALL for every clip (sync only))
ALL = "all"
DEFAULT_SETS = {"grid_s1": ("grid_s1", HERE / "heldout.json"), "lrw_ar": ("lrw_ar", None), "wild": ("wild", ALL),
                "wild2": ("wild2", ALL)}

log = logging.getLogger("generalise")


def parse_set(text: str) -> tuple[str, tuple[Path, Path | str | None]]:
    """``NAME=DATA[:SPLIT.json|:all]`` -> (name, (data, split, ALL or None))."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=DATA[:SPLIT.json|:all], got {text!r}")
    data, _, split = rest.partition(":")
    return name, (Path(data), ALL if split == ALL else Path(split) if split else None)


def evaluate_set(data_dir: Path, split: Path | None, specs, *, val_clips: int = 60, seed: int = 0,
                 run_probe: bool = True, probe_cfg: probe.ProbeConfig | None = None,
                 seeds=(0, 1), progress: bool | None = None) -> dict:
    """Sync (SE4Lip specs) and probe (every spec) figures on one set's held-out clips.

    ``specs``: (label, extractor) pairs from :func:`probe.feature_extractor`.
    """
    data = PreparedData(data_dir)
    if split == ALL:
        train, held, rule = [], list(data.clips), "every clip"
    else:
        train, held = probe.split_clips(data, val_clips, seed, split)
        rule = f"the 'val' ids of {split}" if split else f"PreparedData.split({val_clips}, seed={seed})"
    out = {"data": str(data_dir), "fps": data.fps, "n_clips": len(data.clips), "n_train": len(train),
           "n_held_out": len(held), "median_frames": int(sorted(c.n_frames for c in held)[len(held) // 2]),
           "split": rule, "sync": {}, "timings_s": {}}
    for label, ex in specs:
        if hasattr(ex, "model"):
            t0 = time.perf_counter()
            out["sync"][label] = sync_accuracy(ex, data, held)
            out["timings_s"][f"sync {label}"] = round(time.perf_counter() - t0, 1)
            log.info("%s, %s: sync %s", data_dir, label, out["sync"][label]["summary"])
    if run_probe and train:
        probe_cfg = probe_cfg or probe.ProbeConfig()
        targets = probe.Targets.from_data(data, probe_cfg.ref_eye_px)
        bars = sys.stderr.isatty() if progress is None else progress  # bars on a terminal, never in a log
        banks = (probe.FeatureBank.build(label, ex, data, progress=bars) for label, ex in specs)
        out["probe"] = probe.probe_all(banks, targets, train, held, seeds, probe_cfg)
    return out


def best_baseline(s: dict) -> tuple[str, float] | None:
    """The baseline (a probed feature without sync figures; not the mean shape) of least mean LMD on a set."""
    feats = s.get("probe", {}).get("features", {})
    scored = [(f["lmd"]["mean"], label) for label, f in feats.items()
              if label not in s["sync"] and label != "mean-shape"]
    return (min(scored)[1], min(scored)[0]) if scored else None


def markdown(res: dict) -> str:
    """One table: a row per (set, feature type); LMD also against the set's best baseline."""
    lines = [f"Generated by `{res['command']}` on {res['date']}.", "",
             ("| set | features | held out | sync acc. | exact | confidence | frame ±1 | LMD (px) ↓ "
              "| vs best baseline | r ↑ |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in res["sets"].items():
        labels = list(s.get("probe", {}).get("features", {})) or list(s["sync"])
        best = best_baseline(s)
        for label in labels:
            sync = s["sync"].get(label, {}).get("summary")
            pr = s.get("probe", {}).get("features", {}).get(label)
            cells = ([_fmt(sync[k]) for k in ("accuracy", "exact_accuracy", "mean_confidence", "frame_within1")]
                     if sync else ["–"] * 4)
            if pr:
                versus = (f"{100 * (pr['lmd']['mean'] / best[1] - 1):+.1f}% ({best[0]})" if best and label != best[0]
                          else "best" if best else "–")
                cells += [probe.format_stat(pr["lmd"]), versus, probe.format_stat(pr["gap_r"])]
            else:
                cells += ["–", "–", "–"]
            lines.append(f"| {name} | {label} | {s['n_held_out']} clips ({s['median_frames']} frames) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def default_sets(root: Path) -> dict[str, tuple[Path, Path | str | None]]:
    """:data:`DEFAULT_SETS` prepared under ``root``: name -> (data folder, held-out clips)."""
    return {name: (root / folder, split) for name, (folder, split) in DEFAULT_SETS.items()}


def report_header(script: str, argv, threads: int) -> dict:
    """The command line, date and thread count that every result file starts with."""
    return {"command": f"python benchmarks/quality/{script} " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "threads": threads}


def write_report(res: dict, out: Path, stem: str) -> None:
    """``out/<stem>.json`` and ``out/<stem>.md`` (:func:`markdown`), and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(res))
    print(markdown(res))


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="+", required=True, help="SE4Lip weights: names, .safetensors, hf://, ckpt.pt")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES),
                   help="features without a lip encoder, for the probe (default: %(default)s; whisper-tiny.en "
                        "needs pip install 'se4lip-features[whisper]')")
    p.add_argument("--data-root", type=Path, default=Path("/work/data"), help="folder of the default sets")
    p.add_argument("--set", dest="sets", type=parse_set, action="append", metavar="NAME=DATA[:SPLIT.json|:all]",
                   help="a held-out set (repeatable; default: grid_s1, lrw_ar, wild and wild2 as in the docstring)")
    p.add_argument("--no-probe", action="store_true", help="sync only (the probe trains one head per feature x seed)")
    p.add_argument("--steps", type=int, default=probe.ProbeConfig.steps, help="probe training steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="folder for generalise.json and generalise.md")
    return p


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    sets = dict(args.sets) if args.sets else default_sets(args.data_root)
    try:
        specs = [probe.feature_extractor(s) for s in args.weights]
        if not args.no_probe:
            specs = [probe.feature_extractor(b) for b in args.baselines] + specs
        res = {**report_header("generalise.py", argv, args.threads),
               "sets": {name: evaluate_set(data, split, specs, run_probe=not args.no_probe,
                                           probe_cfg=probe.ProbeConfig(steps=args.steps), seeds=args.seeds)
                        for name, (data, split) in sets.items()}}
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_report(res, args.out, "generalise")
    return 0


if __name__ == "__main__":
    sys.exit(main())
