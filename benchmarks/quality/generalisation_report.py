"""The generalisation report: generalise.json, robustness.json and the fine-tuning JSON of one run, as one page.

    python benchmarks/quality/generalisation_report.py benchmarks/results/generalisation

Reads ``generalise.json``, ``robustness.json`` (+ ``robustness.png``) and ``finetune_grid_s1_4min.json`` from
the folder (written there by ``benchmarks/quality/generalisation.sh``) and writes ``REPORT.md`` beside them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from generalise import markdown  # benchmarks/quality/generalise.py: the sync + probe table


def robustness_table(rob: dict) -> str:
    """Mean (worst clip) cosine to the nominal features per condition, and sync at nominal level and -30 dB."""
    names = list(rob["weights"])
    first = rob["weights"][names[0]]
    conds = sorted(first["conditions"], key=lambda c: (first["conditions"][c]["kind"] != "gain",
                                                        -first["conditions"][c]["db"]))
    syncs = list(first["sync"])
    lines = ["| weights | " + " | ".join(conds) + " | " + " | ".join(f"sync, {s}" for s in syncs) + " |",
             "|---|" + "---:|" * (len(conds) + len(syncs))]
    for name in names:
        r = rob["weights"][name]
        cells = [f"{r['conditions'][c]['mean_cosine']:.3f} ({r['conditions'][c]['min_cosine']:.3f})" for c in conds]
        cells += [f"{r['sync'][s]['accuracy']:.3f}" for s in syncs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def finetune_table(ft: dict) -> str:
    """Before/after held-out figures of the fine-tuning run and its cost."""
    rep = ft["report"]
    rows = [("sync accuracy (offset within ±1)", "accuracy"), ("exact offset", "exact_accuracy"),
            ("mean confidence", "mean_confidence"), ("frame-level exact", "frame_exact"),
            ("frame-level within 1", "frame_within1")]
    lines = ["| held-out segments | before | after |", "|---|---:|---:|"]
    lines += [f"| {label} | {rep['before'][key]:.3f} | {rep['after'][key]:.3f} |" for label, key in rows]
    t, split, steps = rep["time_s"], rep["split"], rep["steps"]
    minutes = ft["video"]["seconds"] / 60
    lines += ["", (f"{minutes:.1f} minutes of video ({len(ft['video']['utterances'])} utterances), "
              f"{split['train_s']:.0f} s trained on, {split['held_out_s']:.0f} s held out ({split['rule']}); "
              f"{steps['run']} of {steps['planned']} planned steps ({steps['rule'] or 'given'}), best at step "
              f"{steps['best']}. Time on {ft['threads']} thread(s): prepare {t['prepare']:.0f} s, "
              f"train {t['train']:.0f} s, total **{t['total'] / 60:.1f} minutes** "
              f"({ft['per_minute_of_video_s']['total']:.0f} s per minute of video).")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    gen = json.loads((folder / "generalise.json").read_text())
    rob = json.loads((folder / "robustness.json").read_text())
    ft = json.loads((folder / "finetune_grid_s1_4min.json").read_text())
    text = "\n".join([
        "# Generalisation: held-out sets, recording level and noise, fine-tuning on one identity", "",
        ("Written by `benchmarks/quality/generalisation.sh` (every figure) and "
        "`benchmarks/quality/generalisation_report.py` (this page); what it means for the release is in "
        "[weights/MODEL_CARD.md](../../../weights/MODEL_CARD.md)."), "",
        "## Sync and landmark probe per held-out set", "", markdown(gen),
        "## Level and noise", "",
        (f"`{rob['command']}`: {len(rob['clips'])} held-out GRID s1 utterances; cosine of each condition's features "
        "to those of the audio as recorded, mean over clips (worst clip in brackets); sync accuracy of the clips."), "",
        robustness_table(rob), "![robustness](robustness.png)", "",
        "## Fine-tuning on one identity", "", f"`{ft['command']}`", "", finetune_table(ft),
    ])
    (folder / "REPORT.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
