"""Training throughput on this machine: the training step's speed against its FLOPs and the measured matmul rate,
where its time goes (data loading included), and what bf16 autocast does to speed and to the numbers.

The step is the one ``se4lip_features.training.train.train`` runs (same sampler, front end, losses, optimiser and
gradient clipping; keep them in step if train.py changes), timed part by part after a warm-up:

- sample  ``WindowSampler.batch``: lip crops from the memory-mapped dataset, audio, gain, mirroring
- stft    ``Batch.speech``: the log-STFT frames of the speech windows
- forward both encoders and the losses; backward; optimiser (clipping + AdamW)

FLOPs of one step come from ``torch.utils.flop_counter`` (matmuls and convolutions, forward and
backward); the machine's rate is a 2048^3 matmul in fp32 and bf16 at the same thread count. bf16's
effect on the numbers: on the same batch and weights, the loss and the gradient direction with and
without autocast; and the losses of a short training (``--compare-steps``) from the same start and batches.
Writes ``train_throughput.json`` into ``--out``.

    python benchmarks/train_throughput.py --weights /work/runs/v1/final.safetensors \
        --split /work/runs/v1/split.json --threads 1 2
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from se4lip_features import weights
from se4lip_features.model import ModelConfig, SE4Lip
from se4lip_features.training.data import PreparedData
from se4lip_features.training.train import TrainConfig, WindowSampler

HERE = Path(__file__).resolve().parent
PARTS = ("sample", "stft", "forward", "backward", "optimiser")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/data/grid_s1"), help="prepared dataset")
    p.add_argument("--weights", help="start from these weights; default: random init (same cost)")
    p.add_argument("--split", type=Path, help="split.json of the run: its 'val' clips are the held-out ones")
    p.add_argument("--val-clips", type=int, default=TrainConfig.val_clips, help="held out when there is no --split")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compare-steps", type=int, default=30,
                   help="train this many steps with bf16 off and on from the same start, and compare the losses")
    p.add_argument("--out", type=Path, default=HERE / "results")
    return p


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


class Step:
    """One training step of train.py, timed part by part."""

    def __init__(self, model, data: PreparedData, sampler: WindowSampler, cfg: TrainConfig):
        self.model, self.data, self.sampler, self.cfg = model, data, sampler, cfg
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def batch(self, rng):
        t0 = time.perf_counter()
        batch = self.sampler.batch(rng)
        t1 = time.perf_counter()
        spec, _ = batch.speech(self.data.fps, self.model.config.n_stft_frames)
        t2 = time.perf_counter()
        return (batch, spec), {"sample": t1 - t0, "stft": t2 - t1}

    def loss(self, batch_spec, bf16: bool):
        batch, spec = batch_spec
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return self.model(spec, batch.lips, batch.targets(), self.cfg.loss).total

    def run(self, rng, bf16: bool) -> dict:
        batch, times = self.batch(rng)
        t0 = time.perf_counter()
        loss = self.loss(batch, bf16)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        t3 = time.perf_counter()
        times.update(forward=t1 - t0, backward=t2 - t1, optimiser=t3 - t2)
        return times

    def gradients(self, batch, bf16: bool) -> tuple[float, torch.Tensor]:
        self.model.zero_grad(set_to_none=True)
        loss = self.loss(batch, bf16)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in self.model.parameters() if p.grad is not None])
        self.model.zero_grad(set_to_none=True)
        return loss.item(), grad


def step_flops(step: Step, rng) -> dict:
    """Matmul and convolution FLOPs of one step (forward + backward), in all and per encoder."""
    batch, _ = step.batch(rng)
    lips, spec = batch[0].lips, batch[1]
    counts = {}
    for name, run in (("total", lambda: step.loss(batch, bf16=False)), ("speech", lambda: step.model.speech(spec)),
                      ("lips", lambda: step.model.lips(lips))):
        with FlopCounterMode(display=False) as counter:
            run().sum().backward()
        counts[name] = counter.get_total_flops()
        step.model.zero_grad(set_to_none=True)
    return counts


def sampling_profile(step: Step, rng, calls: int = 10) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step.batch(rng)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(12)
    return text.getvalue()


def short_training(make_model, data, sampler, cfg, steps: int, bf16: bool) -> list[float]:
    """Losses of ``steps`` training steps from the same initial weights and batches, bf16 on or off."""
    step = Step(make_model(), data, sampler, cfg)
    rng = np.random.default_rng(123)
    losses = []
    for _ in range(steps):
        batch, _ = step.batch(rng)
        loss = step.loss(batch, bf16)
        step.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), 5.0)
        step.opt.step()
        losses.append(loss.item())
    return losses


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    cfg = TrainConfig(val_clips=args.val_clips)
    data = PreparedData(args.data)
    train_clips = data.split(cfg.val_clips, seed=cfg.split_seed)[0]  # training draws from these, as train.py does
    if args.split:
        held = set(json.loads(args.split.read_text())["val"])
        train_clips = [c for c in data.clips if c.id not in held]

    def fresh_model():
        if args.weights:
            return weights.load(args.weights)[0].train()
        torch.manual_seed(0)
        return SE4Lip(ModelConfig(fps=data.fps, lip_height=data.meta["lip_height"],
                                  lip_width=data.meta["lip_width"])).train()

    model = fresh_model()
    sampler = WindowSampler([(data, c) for c in train_clips], cfg, model.config)
    step = Step(model, data, sampler, cfg)
    rng = np.random.default_rng(0)
    lip_windows = cfg.clips_per_batch * cfg.lip_span
    speech_windows = cfg.clips_per_batch * (cfg.lip_span + 2 * cfg.speech_margin)
    flops = step_flops(step, rng)
    print(f"one step: {lip_windows} lip windows + {speech_windows} speech windows, "
          f"{flops['total'] / 1e9:.1f} GFLOP forward + backward (speech encoder {flops['speech'] / 1e9:.1f}, "
          f"lip encoder {flops['lips'] / 1e9:.1f})", flush=True)

    settings = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rates = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
        print(f"\n{threads} thread(s): matmul 2048^3 {rates['fp32']:.0f} GFLOP/s fp32, "
              f"{rates['bf16']:.0f} GFLOP/s bf16", flush=True)
        for bf16 in (False, True):
            step = Step(fresh_model(), data, sampler, cfg)
            for _ in range(args.warmup):
                step.run(rng, bf16)
            runs = [step.run(rng, bf16) for _ in range(args.steps)]
            mean = {part: float(np.mean([r[part] for r in runs])) for part in PARTS}
            total = sum(mean.values())
            peak = rates["bf16" if bf16 else "fp32"]
            row = {"threads": threads, "bf16": bf16, "seconds_per_step": total, "parts_s": mean,
                   "steps_per_s": 1 / total, "lip_windows_per_s": lip_windows / total,
                   "speech_windows_per_s": speech_windows / total,
                   "achieved_gflops": flops["total"] / total / 1e9, "matmul_gflops": rates,
                   "fraction_of_matmul_rate": flops["total"] / total / 1e9 / peak,
                   "data_fraction": (mean["sample"] + mean["stft"]) / total}
            settings.append(row)
            print(f"  bf16 {'on ' if bf16 else 'off'}: {total:.2f} s/step = {row['lip_windows_per_s']:.0f} lip + "
                  f"{row['speech_windows_per_s']:.0f} speech windows/s; {row['achieved_gflops']:.0f} GFLOP/s = "
                  f"{100 * row['fraction_of_matmul_rate']:.0f}% of the {'bf16' if bf16 else 'fp32'} matmul rate; "
                  + ", ".join(f"{p} {1e3 * mean[p]:.0f} ms" for p in PARTS)
                  + f" (data {100 * row['data_fraction']:.1f}%)", flush=True)

    torch.set_num_threads(max(args.threads))
    profile = sampling_profile(Step(fresh_model(), data, sampler, cfg), rng)
    print("\nprofile of 10 batch samplings (WindowSampler.batch + Batch.speech):\n" + profile, flush=True)

    step = Step(fresh_model(), data, sampler, cfg)
    batch, _ = step.batch(np.random.default_rng(1))
    loss32, grad32 = step.gradients(batch, bf16=False)
    loss16, grad16 = step.gradients(batch, bf16=True)
    numerics = {"loss_fp32": loss32, "loss_bf16": loss16,
                "grad_cosine": float(grad32.double() @ grad16.double()
                                     / (grad32.double().norm() * grad16.double().norm())),
                "grad_norm_ratio": float(grad16.norm() / grad32.norm())}
    print(f"same batch and weights: loss {loss32:.4f} fp32 vs {loss16:.4f} bf16; gradient cosine "
          f"{numerics['grad_cosine']:.4f}, norm ratio {numerics['grad_norm_ratio']:.3f}", flush=True)
    if args.compare_steps:
        runs = {name: short_training(fresh_model, data, sampler, cfg, args.compare_steps, bf16)
                for name, bf16 in (("fp32", False), ("bf16", True))}
        tail = max(1, args.compare_steps // 3)
        numerics["short_training"] = {"steps": args.compare_steps, "losses": runs,
                                      **{f"last_{tail}_mean_{k}": float(np.mean(v[-tail:])) for k, v in runs.items()}}
        print(f"{args.compare_steps} training steps from the same weights and batches: mean loss of the last {tail} "
              + ", ".join(f"{k} {np.mean(v[-tail:]):.4f}" for k, v in runs.items()), flush=True)

    result = {"step": {"clips": cfg.clips_per_batch, "lip_windows": lip_windows, "speech_windows": speech_windows,
                       "flops": flops}, "settings": settings, "sampling_profile": profile, "bf16_numerics": numerics,
              "command": " ".join(["python", "benchmarks/train_throughput.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out / 'train_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
