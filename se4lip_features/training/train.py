"""Contrastive training of SE4Lip on a prepared dataset: resumable, seeded, DistributedDataParallel under torchrun."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import atomic, audio, evaluate, weights
from ..model import LossConfig, ModelConfig, SE4Lip
from . import augment
from .data import Clip, PreparedData, read_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe; stored in every checkpoint and in the exported weights' metadata."""

    steps: int = 3500
    clips_per_batch: int = 8  # clips per step (per process)
    lip_span: int = 8  # consecutive lip windows per clip: lip batch = clips_per_batch * lip_span
    speech_margin: int = 8  # speech windows reach this many frames beyond the lip span on each side
    lr: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    gain_db: float = 6.0  # random gain of each clip's audio, +-dB
    noise_p: float = 0.0  # share of clips given white noise at a random 10-40 dB SNR
    warp: float = 0.0  # vocal-tract-length warp of each clip's spectra by a random factor in 1 +- warp
    reverb_p: float = 0.0  # share of clips put in a simulated room (RT60 0.15-0.7 s)
    babble_p: float = 0.0  # share of clips under 3-6 other training clips' talkers at 5-20 dB SNR
    codec_p: float = 0.0  # share of clips passed through mp3, Opus or AAC at 8-32 kbit/s
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    bf16: bool = True  # bf16 autocast (CPUs with AVX-512 BF16, and GPUs)
    val_clips: int = 60  # held out of each dataset
    val_every: int = 700
    ckpt_every_s: float = 300.0
    seed: int = 0  # draws the training: initial weights, windows, augmentation
    split_seed: int = 0  # draws each dataset's held-out clips (PreparedData.split), so runs of other seeds share them

    def __post_init__(self):
        for name in ("steps", "clips_per_batch", "lip_span", "val_clips", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("speech_margin", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        for name in ("weight_decay", "gain_db", "ckpt_every_s"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be at least 0 and finite, got {getattr(self, name)}")
        for name in ("noise_p", "reverb_p", "babble_p", "codec_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if not 0 <= self.warp <= 0.3:
            raise ValueError(f"warp must be between 0 and 0.3, got {self.warp}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config of ``dataclasses.asdict(cfg)`` (as checkpoints and weights' metadata store it).

        A config from before ``split_seed`` drew its split with ``seed``.
        """
        return cls(**{"split_seed": values.get("seed", 0), **values, "loss": LossConfig(**values.get("loss", {}))})


@dataclass
class Batch:
    """One training step's windows: runs of lip windows and, per clip, the speech windows around them.

    ``lip_frame``/``speech_frame`` are the windows' centre frames in their clip, ``lip_clip``/``speech_clip``
    the clip each belongs to (0..B-1); together they say which lip/speech pairs match (:meth:`targets`).
    """

    lips: torch.Tensor  # (B*K, 15, H, W) float in [0, 1], frames oldest first
    wavs: list  # per clip, its augmented 16 kHz audio (torch float32)
    lip_frame: np.ndarray  # (B*K,)
    speech_frame: np.ndarray  # (B*S,)
    lip_clip: np.ndarray  # (B*K,)
    speech_clip: np.ndarray  # (B*S,)
    twins: list | None = None  # per clip, its audio under a second, noisy draw of the augmentation (consistency)
    warps: np.ndarray | None = None  # (B,) per clip, the vocal-tract-length warp of its spectra (TrainConfig.warp)

    def speech(self, fps: float, n_stft: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """The speech windows as :meth:`SE4Lip.forward` takes them, clip by clip: ((frames, which), twin).

        frames : (n_distinct, 257) the distinct log-STFT frames of the windows of ``wavs``, spectra warped
            by ``warps``; which : int64 (B*S, n_stft) the frames each window reads
        twin : (n_distinct, 257) the same frames of ``twins`` (None without them)
        """
        frames, twin, which, total = [], [], [], 0
        for b, wav in enumerate(self.wavs):
            starts, index = audio.shared_stft_frames(_centre_samples(self.speech_frame[self.speech_clip == b], fps),
                                                     n_stft)
            for out, source in ((frames, wav), (twin, self.twins[b] if self.twins else None)):
                if source is not None:
                    spec = audio.log_stft_frames(source, starts)
                    out.append(spec if self.warps is None else augment.warp_frequency(spec, float(self.warps[b])))
            which.append(index + total)
            total += len(starts)
        return (torch.cat(frames), torch.cat(which)), torch.cat(twin) if twin else None

    def targets(self, device=None) -> tuple:
        """offset (B*K, B*S): speech minus lip frame; same (B*K, B*S): whether the pair is from one clip."""
        offset = torch.from_numpy(self.speech_frame[None, :] - self.lip_frame[:, None]).to(device)
        same = torch.from_numpy(self.lip_clip[:, None] == self.speech_clip[None, :]).to(device)
        return offset, same


def _centre_samples(frames: np.ndarray, fps: float) -> torch.Tensor:
    return torch.from_numpy(np.round(np.asarray(frames) / fps * audio.SAMPLE_RATE).astype(np.int64))


class WindowSampler:
    """Draws, per clip, a run of consecutive lip windows and the speech windows around them."""

    def __init__(self, items: list[tuple[PreparedData, Clip]], cfg: TrainConfig, model_cfg: ModelConfig):
        self.items, self.cfg = items, cfg
        half = model_cfg.window_frames // 2
        self.half = half
        self.starts = []  # per clip: first frames of lip runs whose windows are all valid and which hold speech
        for data, clip in items:
            valid = data.clip_valid(clip)
            if cfg.lip_span > len(valid):  # np.convolve would swap its operands: no run fits in the clip
                self.starts.append(np.zeros(0, np.int64))
                continue
            ok = evaluate.lip_windows(valid, half)
            run = np.convolve(ok.astype(int), np.ones(cfg.lip_span, int), mode="valid") == cfg.lip_span
            voiced = _voiced_frames(data.clip_audio(clip), clip.n_frames, data.fps)
            mid = voiced[cfg.lip_span // 2: cfg.lip_span // 2 + len(run)]
            self.starts.append(np.flatnonzero(run & mid))
        usable = [i for i, s in enumerate(self.starts) if len(s)]
        if not usable:
            raise ValueError("no clip has a run of valid, voiced lip windows to train on")
        self.usable = np.asarray(usable)

    def batch(self, rng: np.random.Generator) -> Batch:
        """The next step's :class:`Batch`: ``clips_per_batch`` clips, ``lip_span`` lip windows from each."""
        cfg, half = self.cfg, self.half
        picks = rng.choice(self.usable, size=cfg.clips_per_batch, replace=len(self.usable) < cfg.clips_per_batch)
        lips, wavs, twins, lip_idx, sp_idx, lip_clip, sp_clip = [], [], [], [], [], [], []
        for b, ci in enumerate(picks):
            data, clip = self.items[ci]
            s = int(rng.choice(self.starts[ci]))
            frames = np.asarray(data.clip_lips(clip)[s - half: s + cfg.lip_span + half])  # (K+4, H, W, 3)
            if rng.random() < 0.5:
                frames = frames[:, :, ::-1]  # mirror: lips are near-symmetric, the sync is unchanged
            win = np.lib.stride_tricks.sliding_window_view(frames, 2 * half + 1, axis=0)  # (K, H, W, 3, 5)
            lips.append(torch.from_numpy(np.ascontiguousarray(win.transpose(0, 4, 3, 1, 2))))
            wav = data.clip_audio(clip)
            wavs.append(torch.from_numpy(self.augment(wav, rng)))
            if cfg.loss.consistency:
                twins.append(torch.from_numpy(self.augment(wav, rng, noise_p=1.0)))
            lip_idx.append(np.arange(s, s + cfg.lip_span))
            sp_idx.append(np.arange(s - cfg.speech_margin, s + cfg.lip_span + cfg.speech_margin))
            lip_clip.append(np.full(cfg.lip_span, b))
            sp_clip.append(np.full(len(sp_idx[-1]), b))
        lips = torch.cat(lips).flatten(1, 2).float() / 255.0  # (B*K, 15, H, W), frames oldest first
        warps = 1 + rng.uniform(-cfg.warp, cfg.warp, len(picks)) if cfg.warp else None
        return Batch(lips, wavs, *(np.concatenate(x) for x in (lip_idx, sp_idx, lip_clip, sp_clip)),
                     twins=twins or None, warps=warps)

    def augment(self, wav: np.ndarray, rng: np.random.Generator, noise_p: float | None = None) -> np.ndarray:
        """A clip's audio under the recipe's augmentation (:func:`augment.augment`); ``noise_p`` replaces its
        share of white noise (the consistency twin's is 1), other talkers are other training clips."""
        cfg = self.cfg

        def other_clip() -> np.ndarray:
            data, clip = self.items[int(rng.choice(self.usable))]
            return data.clip_audio(clip)

        return augment.augment(wav, rng, gain_db=cfg.gain_db, noise_p=cfg.noise_p if noise_p is None else noise_p,
                               reverb_p=cfg.reverb_p, babble_p=cfg.babble_p, codec_p=cfg.codec_p, others=other_clip)


def _voiced_frames(wav: np.ndarray, n_frames: int, fps: float, floor_db: float = -35.0) -> np.ndarray:
    """Frames whose 40 ms of audio is within ``floor_db`` of the clip's loudest frame."""
    step = audio.SAMPLE_RATE / fps
    edges = np.round(np.arange(n_frames + 1) * step).astype(int)
    rms = np.array([np.sqrt(np.mean(wav[a:b] ** 2) + 1e-12) for a, b in zip(edges[:-1], edges[1:])])
    return 20 * np.log10(rms / rms.max()) > floor_db


@torch.no_grad()
def spectrogram_stats(items: list[tuple[PreparedData, Clip]], features, level_window: int | None = None,
                      max_clips: int = 200):
    """Per-feature mean and std of the speech encoder's inputs over (up to) ``max_clips`` training clips.

    ``features`` maps log-STFT frames (n, 257) to the encoder's input features (its ``features`` method).
    With ``level_window`` (STFT frames per window), the statistics are of level-normalised windows: each
    window's mean feature subtracted (``ModelConfig.level_norm``). Clips are taken evenly across ``items``.
    """
    total, total_sq, count = 0.0, 0.0, 0
    for data, clip in items[:: max(1, len(items) // max_clips)][:max_clips]:
        windows = audio.speech_windows(torch.from_numpy(data.clip_audio(clip)),
                                       torch.arange(0, clip.n_samples, 640), level_window or 1)
        spec = features(windows)  # (n, level_window or 1, n_features)
        if level_window:
            spec = spec - spec.mean(dim=(1, 2), keepdim=True)
        spec = spec.flatten(0, 1)  # (n * frames, n_features)
        total = total + spec.sum(0)
        total_sq = total_sq + (spec.double() ** 2).sum(0)
        count += spec.shape[0]
    mean = total / count
    std = (total_sq / count - mean.double() ** 2).clamp_min(1e-6).sqrt().float()
    return mean.float(), std


def validate(model, items: list[tuple[PreparedData, Clip]]) -> dict:
    """Held-out sync figures (:func:`evaluate.sync_summary`) of ``model`` on the given clips; its mode is kept."""
    was_training = model.training
    model.eval()
    summary = evaluate.sync_summary([r for d, clips in _by_dataset(items)
                                     for r in evaluate.sync_set(model, evaluate.dataset_clips(d, clips),
                                                                d.fps)["clips"].values()])
    model.train(was_training)
    return summary


def _by_dataset(items: list[tuple[PreparedData, Clip]]) -> list[tuple[PreparedData, list[Clip]]]:
    """(dataset, its clips) in the order of ``items`` (clip ids are unique within a dataset only)."""
    groups: dict[int, tuple[PreparedData, list[Clip]]] = {}
    for d, c in items:
        groups.setdefault(id(d), (d, []))[1].append(c)
    return list(groups.values())


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _init_distributed():
    """(rank, world_size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if world > 1 else 0), world


def train(data_dirs, out_dir: str | Path, cfg: TrainConfig | None = None,
          model_cfg: ModelConfig | None = None, *, init: str | None = None, resume: bool = False,
          device: str | None = None, stop_at: int | None = None, progress: bool = True) -> dict:
    """Train (or fine-tune from ``init`` weights) and write ``out_dir/{ckpt.pt,final.safetensors,history.json}``.

    ``data_dirs`` is one prepared dataset or several (same fps and lip crops), each holding out
    ``cfg.val_clips`` clips by its own :meth:`PreparedData.split`, so a dataset's held-out clips do not
    depend on what it is trained with.

    ``stop_at`` ends this run early at that step with a checkpoint (the schedule still spans ``cfg.steps``),
    so long trainings can be run in slices and resumed. Returns the history: per-step loss and
    per-validation sync accuracy (:func:`fit`).
    """
    cfg, model_cfg = cfg or TrainConfig(), model_cfg or ModelConfig()
    rank, _ = _init_distributed()
    device = _device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "ckpt.pt"
    data_dirs = [Path(d) for d in ([data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs)]
    datasets = [PreparedData(d) for d in data_dirs]
    data = datasets[0]  # fps and lip crops: the same in every dataset
    for d, other in zip(data_dirs[1:], datasets[1:]):
        for key in ("fps", "lip_height", "lip_width", "lip_crop_scale"):
            if other.meta[key] != data.meta[key]:
                raise ValueError(f"{d}: {key} {other.meta[key]} differs from {data_dirs[0]}'s {data.meta[key]}")
    splits = [d.split(cfg.val_clips, seed=cfg.split_seed) for d in datasets]
    train_items = [(d, c) for d, (clips, _) in zip(datasets, splits) for c in clips]
    val_items = [(d, c) for d, (_, clips) in zip(datasets, splits) for c in clips]
    state = None
    if resume:
        state = load_checkpoint(ckpt_path, device)
        model_cfg = ModelConfig.from_dict(state["model_config"])  # the design the run was started with
        if state["step"] > cfg.steps:
            raise ValueError(f"{ckpt_path}: the run is at step {state['step']}, past --steps {cfg.steps}; resume "
                             f"with --steps {state['step']} or more")
        _check_same_split(out_dir / "split.json", [c.id for _, c in val_items])
    atomic.write_text(out_dir / "split.json", json.dumps({"val": [c.id for _, c in val_items]}, indent=0))

    torch.manual_seed(cfg.seed)
    if init is not None and state is None:
        model, info = weights.load(init)
        log.info("fine-tuning from %s (%s)", info["name"], info["sha256"][:12])
        model.config = _on_data(model.config, data, data_dirs[0])
    elif state is not None:  # the checkpoint's weights, statistics included, are loaded by fit
        model = SE4Lip(model_cfg)
    else:  # the lip crops and frame rate are the data's
        model_cfg = dataclasses.replace(model_cfg, fps=data.fps, lip_height=data.meta["lip_height"],
                                        lip_width=data.meta["lip_width"], lip_crop_scale=data.meta["lip_crop_scale"])
        model = SE4Lip(model_cfg)
        mean, std = spectrogram_stats(train_items, model.speech.features,
                                      model_cfg.n_stft_frames if model_cfg.level_norm else None)
        model.speech.spec_mean.copy_(mean)
        model.speech.spec_std.copy_(std)

    def checkpoint(payload: dict) -> None:
        with atomic.replacing(ckpt_path) as (tmp,):
            torch.save({**payload, "train_config": dataclasses.asdict(cfg),
                        "model_config": model.config.to_dict()}, tmp)

    history = fit(model, train_items, val_items, cfg, device=device, progress=progress, stop_at=stop_at,
                  checkpoint=checkpoint, state=state, where=str(ckpt_path))
    if rank == 0 and history["step"] and history["step"][-1] == cfg.steps:
        atomic.write_text(out_dir / "history.json", json.dumps(history))
        weights.save(model, out_dir / "final.safetensors", fp16=False,
                     metadata={"train_config": json.dumps(dataclasses.asdict(cfg)),
                               "data": ", ".join(map(str, data_dirs)),
                               "steps": cfg.steps, "init": init or "", "train_wall_s": f"{history['wall_s']:.0f}"})
        plot_history(history, out_dir / "training.png")
    return history


def fit(model: SE4Lip, train_items: list[tuple[PreparedData, Clip]], val_items: list[tuple[PreparedData, Clip]],
        cfg: TrainConfig, *, device=None, progress: bool = True, patience: int | None = None,
        stop_at: int | None = None, checkpoint=None, state: dict | None = None, where: str = "") -> dict:
    """Train ``model`` in place on the windows of ``train_items``, validating sync on ``val_items``.

    Every ``cfg.val_every`` steps (and at the last) the held-out sync (:func:`validate`) is measured. With
    ``patience``, the model's sync is measured before the first step too, the state of the best validation
    (accuracy, ties broken by mean confidence) is kept, the run ends after ``patience`` validations without
    a better one, and the model is left with the best state (the start's, when no step improved on it):
    fine-tuning's early stopping.

    Parameters
    ----------
    model : an :class:`SE4Lip` (its design and lip crops must match the data's)
    train_items, val_items : (dataset, clip) pairs to train on and to validate on
    cfg : the recipe; ``cfg.steps`` spans the learning-rate schedule
    stop_at : end at this step (the schedule still spans ``cfg.steps``), with a checkpoint
    checkpoint : ``checkpoint(payload)`` stores the run's state (rank 0), every ``cfg.ckpt_every_s`` seconds
        and at the end; None: nothing is stored
    state : a payload of ``checkpoint`` (:func:`load_checkpoint`) to resume from; where : what it is called
        in errors

    Returns
    -------
    dict, the history: per-step ``loss``/``bce``/``nce``/``consistency``, per-validation ``val_acc``,
    ``val_exact``, ``val_conf``, ``wall_s`` (this run's training time, earlier slices included) and, with
    ``patience``, ``best_step`` and ``before`` (the held-out summary before the first step)
    """
    from tqdm import tqdm

    rank, world = _init_distributed()
    if patience is not None and world > 1:
        raise ValueError("early stopping (patience) runs in one process only")
    device = _device(device)
    data = train_items[0][0]
    model_cfg = model.config
    if (data.meta["lip_height"], data.meta["lip_width"]) != (model_cfg.lip_height, model_cfg.lip_width):
        raise ValueError(f"{data.root}: lip crops are {data.meta['lip_height']}x{data.meta['lip_width']}, "
                         f"the model expects {model_cfg.lip_height}x{model_cfg.lip_width}")
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, rank])
    history = {"step": [], "loss": [], "bce": [], "nce": [], "consistency": [], "val_step": [], "val_acc": [],
               "val_exact": [], "val_conf": [], "wall_s": 0.0}
    step = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"{where}: does not match the model stored in it "
                             f"({' '.join(str(err).split())[:200]})") from err
        rng.bit_generator.state = state["rng"][rank] if world > 1 else state["rng"][0]
        torch.set_rng_state(state["torch_rng"])
        history, step = {"wall_s": 0.0, "consistency": []} | state["history"], state["step"]
        log.info("resumed from %s at step %d", where, step)
    best = None
    if patience is not None:
        history["before"] = before = validate(model, val_items)
        log.info("before training: val sync accuracy %.3f, confidence %.3f", before["accuracy"],
                 before["mean_confidence"])
        best = {"score": _score(before), "step": 0, "state": copy.deepcopy(model.state_dict())}
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    sampler = WindowSampler(train_items, cfg, model_cfg)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def save_checkpoint():
        rng_states = [rng.bit_generator.state]
        if world > 1:
            rng_states = [None] * world
            dist.all_gather_object(rng_states, rng.bit_generator.state)
        if rank == 0:
            checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "rng": rng_states, "torch_rng": torch.get_rng_state(), "history": history})

    def stopped() -> str:
        written = checkpoint is not None and Path(where).is_file()
        return f"the last checkpoint is {where}" if written else "no checkpoint was written"

    bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=not progress or rank > 0)
    last_save = started = time.time()
    wall_before = history["wall_s"]  # training time of earlier slices of this run (resumes)
    end = min(cfg.steps, stop_at or cfg.steps)
    while step < end:
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = sampler.batch(rng)
        (frames, which), twin = batch.speech(data.fps, model_cfg.n_stft_frames)
        with autocast:
            losses = net((frames.to(device), which.to(device)), batch.lips.to(device), batch.targets(device), cfg.loss,
                         None if twin is None else twin.to(device))
        loss = losses.total
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step + 1}: the loss is {loss.item()}; training stopped "
                                     f"({stopped()}); lower --lr or raise --temperature")
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DistributedDataParallel averages the gradients across processes here
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"step {step + 1}: the gradient norm is {grad_norm.item()}; training stopped "
                                     f"({stopped()}); lower --lr")
        opt.step()
        step += 1
        history["step"].append(step)
        for key in ("loss", "bce", "nce", "consistency"):
            history[key].append(getattr(losses, "total" if key == "loss" else key).item())
        postfix = {"loss": f"{np.mean(history['loss'][-50:]):.3f}"}
        if history["val_acc"]:
            postfix["val_acc"] = f"{history['val_acc'][-1]:.3f}"
        bar.set_postfix(postfix)
        bar.update()
        if step % cfg.val_every == 0 or step == cfg.steps:
            if rank == 0:
                summary = validate(model, val_items)
                for key, name in (("val_acc", "accuracy"), ("val_exact", "exact_accuracy"),
                                  ("val_conf", "mean_confidence")):
                    history[key].append(summary[name])
                history["val_step"].append(step)
                log.info("step %d: val sync accuracy %.3f (exact %.3f)", step, summary["accuracy"],
                         summary["exact_accuracy"])
                if best is not None:
                    if _score(summary) > best["score"]:
                        best.update(score=_score(summary), step=step, state=copy.deepcopy(model.state_dict()))
                    if (step - best["step"]) // cfg.val_every >= patience:
                        end = step  # early stop: checkpoint below, then leave the loop
            if world > 1:
                dist.barrier()
        if checkpoint is not None and (time.time() - last_save > cfg.ckpt_every_s or step == end):
            history["wall_s"] = wall_before + time.time() - started
            save_checkpoint()
            last_save = time.time()
            if not progress and rank == 0:  # no bar (a log, not a terminal): one line per checkpoint instead
                log.info("step %d of %d, loss %.3f (mean of the last 50), checkpoint written", step, cfg.steps,
                         np.mean(history["loss"][-50:]))
    bar.close()
    if checkpoint is None:  # else as stored with the last checkpoint
        history["wall_s"] = wall_before + time.time() - started
    if best is not None:
        model.load_state_dict(best["state"])
        history["best_step"] = best["step"]
    model.eval()
    return history


def _on_data(cfg: ModelConfig, data: PreparedData, where: Path) -> ModelConfig:
    """Starting weights' design on the data they continue on: the frame rate and crop size must be the weights'
    (the windows and the lip encoder are built for them); a crop scale of its own is learnt, and recorded."""
    for key in ("fps", "lip_height", "lip_width"):
        if getattr(cfg, key) != data.meta[key]:
            raise ValueError(f"{where}: {key} {data.meta[key]} differs from the starting weights' {getattr(cfg, key)}; "
                             f"prepare the data again with --fps {cfg.fps:g} --crop {cfg.lip_height} {cfg.lip_width}")
    if cfg.lip_crop_scale != data.meta["lip_crop_scale"]:
        log.warning("%s: lip crops at scale %g, the starting weights' are %g: training adapts them to the data's, "
                    "which the new weights record", where, data.meta["lip_crop_scale"], cfg.lip_crop_scale)
        cfg = dataclasses.replace(cfg, lip_crop_scale=float(data.meta["lip_crop_scale"]))
    return cfg


def _score(summary: dict) -> tuple[float, float]:
    """What early stopping maximises: held-out sync accuracy, ties broken by the mean confidence."""
    return summary["accuracy"], summary["mean_confidence"]


def _device(device) -> torch.device:
    """The training device: the given one, else cuda where there is one; under torchrun, each process's GPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _check_same_split(path: Path, val_ids: list[str]) -> None:
    """Refuse to resume a run on other data: its split.json must hold out exactly the clips these datasets do."""
    if not path.is_file():
        return  # a run from before split.json was written
    saved = read_ids(path)  # the one reader of split.json; a damaged one is an error naming it
    if saved != set(val_ids):
        other = sorted(saved - set(val_ids))[:3] or sorted(set(val_ids) - saved)[:3]
        raise ValueError(f"{path}: the run held out other clips than these datasets do (e.g. {', '.join(other)}): "
                         "other data, or another --val-clips/--split-seed; resume with the run's own data and recipe")


def load_checkpoint(path: Path, device) -> dict:
    """A run's checkpoint, the one reader of ``ckpt.pt``; a missing or damaged one is a one-line error naming it.

    Tensors and plain values only (``weights_only``): a crafted file holding any other object is refused
    before anything in it runs.
    """
    import pickle

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume; start the run without --resume")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: not a se4lip-train checkpoint: it holds objects other than tensors and plain "
                         f"values, and loading those could run code, so nothing in it was loaded "
                         f"({' '.join(str(err).split())[:120]})") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: damaged or not a se4lip-train checkpoint ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); start a new run") from err
    try:
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}, not a dict")
        ModelConfig.from_dict(state["model_config"])
        missing = {"model", "optimizer", "step", "history", "rng", "torch_rng"} - set(state)
        if missing:
            raise KeyError(f"lacks {sorted(missing)}")
        bad = weights.non_finite(state["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: damaged or not a se4lip-train checkpoint ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); start a new run") from err
    if bad:  # a run that diverged before this checkpoint: resuming it would only stop again
        raise ValueError(f"{path}: tensor {bad} holds NaN or infinite values; this run cannot be resumed: start a "
                         "new one (lower --lr)")
    return state


def plot_history(history: dict, path: Path) -> None:
    """Loss (smoothed) and validation sync accuracy against step, as a PNG."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or state
    except ImportError:
        log.warning("matplotlib is not installed: no training plot (pip install 'se4lip-features[plots]')")
        return
    fig = Figure(figsize=(10, 3.5))
    (ax1, ax2) = fig.subplots(1, 2)
    loss = np.asarray(history["loss"])
    k = min(50, len(loss))
    ax1.plot(history["step"][k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"))
    ax1.set(xlabel="step", ylabel="loss (50-step mean)", title="training loss")
    ax2.plot(history["val_step"], history["val_acc"], "o-", label="|offset| <= 1")
    ax2.plot(history["val_step"], history["val_exact"], "s-", label="offset = 0")
    ax2.set(xlabel="step", ylabel="accuracy", ylim=(0, 1), title="validation sync accuracy")
    ax2.legend()
    fig.tight_layout()
    atomic.save_figure(fig, path)
