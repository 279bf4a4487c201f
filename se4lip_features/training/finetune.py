"""Per-identity fine-tuning: one talking-head video, the end of its timeline held out, early stopping on its sync."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import atomic, evaluate, weights
from .data import PreparedData, open_inputs
from .train import TrainConfig, fit, validate

log = logging.getLogger(__name__)

STEPS_PER_MINUTE = 100  # training steps per minute of the video's training part ...
MIN_STEPS, MAX_STEPS = 100, 1000  # ... within these bounds


def steps_for(train_seconds: float) -> int:
    """The step rule: 100 steps per minute of training video (8 clips a step: each 2 s segment is seen ~13
    times a minute of video), at least 100 and at most 1000 (a 10-minute video reaches the cap)."""
    return int(min(MAX_STEPS, max(MIN_STEPS, round(STEPS_PER_MINUTE * train_seconds / 60))))


# The recipe of fine-tuning: TrainConfig's, at a third of its peak learning rate with a short warm-up, validated
# every 25 steps; its steps come from the video's length (steps_for) unless FinetuneConfig.steps says otherwise.
RECIPE = TrainConfig(lr=1e-4, warmup_steps=20, val_every=25)


@dataclass(frozen=True)
class FinetuneConfig:
    """How one identity is fine-tuned: the split, the early stopping and the training recipe it runs."""

    steps: int | None = None  # None: steps_for(seconds of training video)
    holdout: float = 0.3  # share of the timeline held out, at its end
    segment_s: float = 2.0  # the video is cut into segments of this length: the units of the split and of sync
    patience: int = 4  # validations (every train.val_every steps) without improvement before stopping
    train: TrainConfig = field(default_factory=lambda: RECIPE)  # its steps are replaced by the steps above

    def __post_init__(self):
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be between 0 and 1, got {self.holdout}")
        if self.segment_s <= 0:
            raise ValueError(f"segment_s must be positive, got {self.segment_s}")
        if self.patience < 1:
            raise ValueError(f"patience must be at least 1, got {self.patience}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def recipe(self, steps: int) -> TrainConfig:
        """The training recipe of a run of ``steps`` steps (its warm-up no longer than the run)."""
        return replace(self.train, steps=steps, warmup_steps=min(self.train.warmup_steps, steps))


def tail_split(data: PreparedData, holdout: float):
    """(training clips, held-out clips): the clips of the last ``holdout`` of the timeline are held out.

    Clips are in the order they were prepared (a video's segments in time order); a clip is held out when it
    starts at or after the point ``1 - holdout`` of the way through the frames. Never random: neighbouring
    segments of one video share too much to test each other.
    """
    total = sum(c.n_frames for c in data.clips)
    cut = (1 - holdout) * total
    train_clips = [c for c in data.clips if c.frame_start < cut]
    held = [c for c in data.clips if c.frame_start >= cut]
    if not train_clips or not held:
        raise ValueError(f"{data.root}: {len(data.clips)} segment(s) of {total} frames cannot be split into "
                         f"the first {1 - holdout:.0%} and the last {holdout:.0%}; give a longer video or "
                         "shorter segments")
    return train_clips, held


def _scorable(valid, half: int) -> bool:
    """Whether clip_sync gives a clip a verdict: long enough for its least search, with a full lip window."""
    return len(valid) >= 5 * evaluate.MIN_SHIFT and bool(evaluate.lip_windows(valid, half).any())


def finetune(source, out, cfg: FinetuneConfig | None = None, *, init: str | None = None, work=None,
             device: str | None = None, detector=None, progress: bool = True) -> dict:
    """Fine-tune weights on one identity's video and write the best of them (by held-out sync) to ``out``.

    Parameters
    ----------
    source : a talking-head video, a renderer data folder (aud.wav + ori_imgs/<i>.jpg + <i>.lms) or a
        prepared dataset folder
    out : the .safetensors to write (atomically); the report goes beside it as ``<stem>.finetune.json``
    init : the starting weights (default: the default weights)
    work : folder to keep the prepared data in (default: a temporary folder beside ``out``, removed at the end)
    detector : face landmark detector for videos (default: mediapipe's; see ``prepare_videos``)

    Returns
    -------
    dict: the report (before/after held-out sync figures, steps, times, the split) as written to the JSON
    """
    cfg = cfg or FinetuneConfig()
    out = Path(out)
    t0 = time.perf_counter()
    model, info = weights.load(init)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-finetune-") as tmp:
        c = model.config
        data = open_inputs([source], Path(work or tmp) / "data", fps=c.fps, height=c.lip_height, width=c.lip_width,
                           scale=c.lip_crop_scale, segment_s=cfg.segment_s, detector=detector, progress=progress)
        prepare_s = time.perf_counter() - t0
        train_clips, held = tail_split(data, cfg.holdout)
        train_s = sum(c.n_frames for c in train_clips) / data.fps
        steps = cfg.steps or steps_for(train_s)
        half = model.config.window_frames // 2
        val_items = [(data, c) for c in held if _scorable(data.clip_valid(c), half)]
        if not val_items:
            raise ValueError(f"{source}: no held-out segment of {5 * evaluate.MIN_SHIFT} frames or more has a "
                             f"{2 * half + 1}-frame run of frames with a face")
        recipe = cfg.recipe(steps)
        t1 = time.perf_counter()
        history = fit(model, [(data, c) for c in train_clips], val_items, recipe, device=device, progress=progress,
                      patience=cfg.patience)  # leaves the model with its best state
        fit_s = time.perf_counter() - t1
        meta = {"init": info["name"], "init_sha256": info["sha256"], "finetune_config": json.dumps(asdict(cfg)),
                "train_config": json.dumps(asdict(recipe)), "data": str(source), "best_step": history["best_step"]}
        sha = weights.save(model.cpu(), out, metadata=meta)
        after = validate(weights.load(out)[0], val_items)  # the figures of the file as written (fp16)
    report = {
        "input": str(source), "weights": str(out), "sha256": sha, "init": info["name"],
        "init_sha256": info["sha256"], "config": asdict(cfg),
        "split": {"rule": f"last {cfg.holdout:.0%} of the timeline, {cfg.segment_s:g} s segments",
                  "train_segments": len(train_clips), "held_out_segments": len(val_items),
                  "held_out_unscorable": len(held) - len(val_items),
                  "train_s": round(train_s, 2),
                  "held_out_s": round(sum(c.n_frames for _, c in val_items) / data.fps, 2)},
        "steps": {"planned": steps, "run": history["step"][-1] if history["step"] else 0,
                  "best": history["best_step"],
                  "rule": None if cfg.steps else
                  f"{STEPS_PER_MINUTE} per minute of training video, within [{MIN_STEPS}, {MAX_STEPS}]"},
        "validation": {"step": history["val_step"], "accuracy": history["val_acc"],
                       "confidence": history["val_conf"]},
        "before": history["before"], "after": after,
        "time_s": {"prepare": round(prepare_s, 1), "train": round(fit_s, 1),
                   "total": round(time.perf_counter() - t0, 1)},
    }
    with atomic.replacing(report_path(out)) as (tmp_json,):
        tmp_json.write_text(json.dumps(report, indent=1) + "\n")
    return report


def report_path(out: Path) -> Path:
    """Where the report of the weights ``out`` goes: ``<stem>.finetune.json`` beside them."""
    return Path(out).with_name(Path(out).stem + ".finetune.json")
