"""Peak memory of extracting long files: 5 and 60 minutes of speech, each extracted in a fresh process.

Writes the test audio (GRID s1 utterances repeated, 16-bit PCM) to ``--tmp``, runs ``extract_file`` on
each in its own Python process and reports that process's peak resident set size (``ru_maxrss``), both
after loading the model (the floor) and at the end. With ``--in-memory`` it also measures the old way
for the shortest file: ``load_audio`` then ``Extractor.extract``, whose output array alone grows with the
duration (ds layout: 32 KiB per frame, 2.9 GB per hour at 25 fps). Writes ``memory.json`` into ``--out``.

    python benchmarks/memory.py --weights /work/runs/v1/final.safetensors --minutes 5 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from speed import DEFAULT_VIDEOS, speech  # benchmarks/ is a folder of scripts, not a package

CHILD = r"""
import json, resource, sys, time
import torch
import se4lip_features
from se4lip_features import audio, extract

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
enc = se4lip_features.load(args["weights"], device="cpu", precision=args["precision"])
floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if args["in_memory"]:
    n_frames = len(enc.extract(audio.load_audio(args["audio"]), audio.SAMPLE_RATE, layout=args["layout"]))
else:
    n_frames = extract.extract_file(args["audio"], args["npy"], extractor=enc, layout=args["layout"],
                                    force=True, progress=args["progress"])["n_frames"]
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"floor_mib": floor / 1024, "peak_mib": peak / 1024, "seconds": seconds, "n_frames": n_frames}))
"""


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="SE4Lip .safetensors")
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 60])
    p.add_argument("--layout", default="ds")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS, help="speech to repeat")
    p.add_argument("--tmp", type=Path, default=Path("/tmp/se4lip_memory"), help="where the long audio goes")
    p.add_argument("--in-memory", action="store_true", help="also measure load_audio + extract (shortest file)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    return p


def write_long_wav(path: Path, minutes: float, clip: np.ndarray) -> None:
    """``clip`` (16 kHz float32) repeated to ``minutes``, written block by block as 16-bit PCM."""
    import soundfile

    total = round(minutes * 60 * 16000)
    if path.exists() and soundfile.info(str(path)).frames == total:
        return
    with soundfile.SoundFile(str(path), "w", 16000, 1, subtype="PCM_16") as f:
        for start in range(0, total, len(clip)):
            f.write(clip[: total - start])


def run_child(args, audio_path: Path, in_memory: bool) -> dict:
    spec = {"weights": args.weights, "precision": args.precision, "threads": args.threads, "layout": args.layout,
            "audio": str(audio_path), "npy": str(audio_path.with_suffix(".npy")), "in_memory": in_memory,
            "progress": sys.stderr.isatty()}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], stdout=subprocess.PIPE, check=True,
                          text=True)
    audio_path.with_suffix(".npy").unlink(missing_ok=True)  # 2.9 GB for an hour in ds layout
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    args.tmp.mkdir(parents=True, exist_ok=True)
    clip = speech(args.videos, 60.0)
    rows = []
    for minutes in args.minutes:
        path = args.tmp / f"speech_{minutes:g}min.wav"
        write_long_wav(path, minutes, clip)
        modes = [False] + ([True] if args.in_memory and minutes == min(args.minutes) else [])
        for in_memory in modes:
            r = run_child(args, path, in_memory)
            r.update(minutes=minutes, mode="load_audio + Extractor.extract" if in_memory else "extract_file")
            rows.append(r)
            print(f"{minutes:5g} min  {r['mode']:32s} peak RSS {r['peak_mib']:7.0f} MiB (model loaded: "
                  f"{r['floor_mib']:.0f} MiB)  {r['n_frames']} frames in {r['seconds']:.0f} s", flush=True)
    result = {"layout": args.layout, "precision": args.precision, "threads": args.threads, "rows": rows,
              "command": " ".join(["python", "benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out / 'memory.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
