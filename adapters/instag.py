"""InsTaG: the patch table of ``se4lip-patch instag``, what its inserted lines call, and its pre-training data.

Flag mapping as TalkingGaussian's: ``--audio_feature`` is an alias of ``--audio_extractor`` and ``se4lip`` a
value of both; a saved ``se4lip`` survives to ``synthesize_fuse.py``. InsTaG adapts a person-agnostic motion
prior, pre-trained per feature type on five identities (``pretrain_face.py`` and ``pretrain_mouth.py`` with
``-s data/pretrain``), so an SE4Lip avatar needs an SE4Lip prior: ``python -m se4lip_features.adapters.instag
data/pretrain`` writes and checks every identity's ``aud_se4lip.npy`` first (see the README).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import common, engine, gaussian
from .engine import branch, insert_after, insert_before
from .gaussian import keep_saved_feature, load_features  # noqa: F401

FEATURES = ("deepspeech", "esperanto", "hubert", "ave", common.FEATURE)
ID_KEY = gaussian.ID_KEY
# The identities pretrain_face.py and pretrain_mouth.py read from their -s directory (fixed in the scripts).
PRETRAIN_IDS = ("macron", "shaheen", "may", "jaein", "obama1")


def identities(root: str | Path) -> list[Path]:
    """The identity folders of a pre-training directory: those of ``PRETRAIN_IDS`` it holds, or, if none,
    every subfolder holding ``transforms_train.json`` (a pre-training script edited for other identities)."""
    found = sorted(p for p in Path(root).iterdir() if (p / "transforms_train.json").is_file())
    return [p for p in found if p.name in PRETRAIN_IDS] or found


def avatar_meta(root: str | Path) -> tuple[dict, Path]:
    """The sidecar that fixes the feature type of the networks built from ``-s root``, and its file.

    An avatar's data directory has its own ``aud_se4lip.npy``. A pre-training directory (``data/pretrain``)
    has one per identity, and the scripts build every motion network from the top-level arguments: then all
    identities' features must agree (dim, layout, weights), and the first one's sidecar is the reference.
    """
    root = Path(root)
    if (root / common.SELF_FEATURES).exists() or (root / common.SOURCE_WAV).exists() or not root.is_dir():
        return common.self_meta(root), root / common.SELF_FEATURES
    ids = identities(root)
    if not ids:
        common.self_features(root)  # raises, naming both files it looked for
    metas = [(common.self_meta(d), d / common.SELF_FEATURES) for d in ids]
    for meta, where in metas[1:]:
        common.check_same_features(meta, metas[0][0], where, metas[0][1])
    return metas[0]


def feature_dim(args) -> int:
    """The motion networks' audio input dimension (InsTaG widens its AudioNet itself when it is 128 or more)."""
    return int(avatar_meta(args.source_path)[0]["dim"])


def guard_checkpoints(audio_net, args) -> None:
    """Refuse checkpoints and priors whose audio network was trained on other features or weights."""
    meta, where = avatar_meta(args.source_path)
    common.guard_audio_net(audio_net, meta, gaussian.FLAG, where)


def mux_audio(args) -> Path | None:
    """Write ``out_audio.mp4`` beside ``synthesize_fuse.py``'s silent ``renders/out.mp4``, with ``--audio``."""
    split = "train" if getattr(args, "use_train", False) else "test"
    video = Path(args.model_path) / split / "ours_None" / "renders" / "out.mp4"
    return common.mux_audio(args.audio, video)


def prepare_pretrain(root: str | Path, weights: str | None = None) -> dict[str, tuple[int, ...]]:
    """Write (if missing) and check ``<root>/<id>/aud_se4lip.npy`` for every pre-training identity.

    Each file is extracted from ``<root>/<id>/aud.wav`` and checked against that identity's frames; all must
    come from the same weights, dim and layout, as one motion prior is trained on them together.

    Returns
    -------
    {identity: (n_frames, window, dim)}
    """
    common.use_console_logging()
    ids = identities(root)
    if not ids:
        raise FileNotFoundError(f"{root}: no identity folders (subfolders with transforms_train.json); InsTaG's "
                                f"pre-training reads {', '.join(PRETRAIN_IDS)}, each processed by its "
                                "data_utils/process.py")
    missing = sorted(set(PRETRAIN_IDS) - {d.name for d in ids})
    if missing:
        common.log.warning("%s: no %s; pretrain_face.py and pretrain_mouth.py read %s", root, ", ".join(missing),
                           ", ".join(PRETRAIN_IDS))
    shapes, reference = {}, None
    for d in ids:
        npy, wav = d / common.SELF_FEATURES, d / common.SOURCE_WAV
        if not npy.exists():
            if not wav.exists():
                raise FileNotFoundError(f"{npy}: not found, and neither is {wav} to extract it from")
            common.log.info("extracting %s", npy)
            common.extract(wav, npy, weights=weights)
        else:
            common.check_source(npy, wav)
        feats, meta = common.read_features(npy)
        common.check_frame_count(len(feats), common.video_frame_count(d, ID_KEY), npy, d, meta)
        if reference is None:
            reference = (meta, npy)
        common.check_same_features(meta, reference[0], npy, reference[1])
        shapes[d.name] = feats.shape
    return shapes


def main(argv: list[str] | None = None) -> int:
    """``python -m se4lip_features.adapters.instag data/pretrain [--weights W]``: the prior's SE4Lip features."""
    parser = argparse.ArgumentParser(prog="python -m se4lip_features.adapters.instag",
                                     description="Write and check aud_se4lip.npy in every identity folder of "
                                                 "InsTaG's pre-training directory, before pretrain_face.py and "
                                                 "pretrain_mouth.py --audio_feature se4lip.")
    parser.add_argument("root", type=Path, help="the pre-training directory (data/pretrain)")
    parser.add_argument("--weights", help="SE4Lip weights (name or .safetensors); default: the package default")
    args = parser.parse_args(argv)
    try:
        shapes = prepare_pretrain(args.root, args.weights)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, shape in shapes.items():
        print(f"{args.root / name / common.SELF_FEATURES}: {shape[0]} frames x {shape[1]} x {shape[2]}")
    return 0


_IMPORT = engine.imports("instag", "se4lip_instag")
_DIM = ["        elif 'ave' in args.audio_extractor:",
        "            self.audio_in_dim = 32",
        "        else:",
        "            raise NotImplementedError"]
_NET = ["            self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)",
        "        self.audio_att_net = AudioAttNet(self.audio_dim)"]


def _reader(path: str, stem: str) -> engine.Edit:
    return insert_before(
        path, "the self-driven feature load in readCamerasFromTransforms",
        ["        elif audio_file == '':",
         f"            aud_features = np.load(os.path.join(path, '{stem}.npy'.format(postfix_dict[audio_extractor])))"],
        branch("        ", "elif audio_extractor == 'se4lip':", _IMPORT,
               "aud_features = se4lip_instag.load_features(path, audio_file)"))


RENDERER = engine.Renderer("Fictionarry/InsTaG", "42f68f80806a430afca3092b773902c9a2860a62", (
    *gaussian.argument_edits("instag", "se4lip_instag", FEATURES),
    *(edit for cls in ("MotionNetwork", "MouthMotionNetwork", "PersonalizedMotionNetwork")
      for edit in gaussian.network_edits("instag", "se4lip_instag", f"class {cls}(nn.Module):", _DIM, _NET)),
    _reader("scene/dataset_readers.py", "aud{}"),  # adaptation: DeepSpeech is aud.npy
    _reader("scene_pretrain/dataset_readers.py", "aud_{}"),  # pre-training: DeepSpeech is aud_ds.npy
    insert_after("synthesize_fuse.py", "the render_sets call of synthesize_fuse.py",
                 [("    render_sets(model.extract(args), args.iteration, pipeline.extract(args), args.use_train, "
                   "args.fast, args.dilate, args.personalized)")],
                 branch("    ", "if args.audio_extractor == 'se4lip':", _IMPORT, "se4lip_instag.mux_audio(args)")),
))


if __name__ == "__main__":
    sys.exit(main())
