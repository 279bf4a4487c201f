"""GaussianTalker: the patch table of ``se4lip-patch gaussiantalker`` and what its inserted lines call.

GaussianTalker has no feature option: its reader always loads ``aud_ds.npy`` and its deformation network
always builds a 29-input AudioNet. The patch adds ``--audio_feature`` to ``ModelParams`` (default
``deepspeech``, GaussianTalker's behaviour; ``se4lip`` the other value). ``train.py`` saves it in ``cfg_args``
and ``render.py`` restores it from there (its ``ModelParams`` is built with ``sentinel=True``). The
deformation network sees only ``ModelHiddenParams``, so the patch makes that group's ``extract`` carry
``audio_feature`` and ``source_path`` over; a ``cfg_args`` from an unpatched run reads as ``deepspeech``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import common, engine
from .engine import Edit, Swap, branch, insert_after, insert_before, or_else

FEATURES = ("deepspeech", common.FEATURE)
DEFAULT_FEATURE = "deepspeech"
ID_KEY = "aud_id"  # GaussianTalker maps frames to feature rows by aud_id
CUSTOM_SPLIT = "transforms_val.json"  # --custom_aud drives the cameras of this split, one per listed frame


def feature_dim(args) -> int:
    """The deformation network's audio input dimension, from ``<source_path>/aud_se4lip.npy``'s sidecar.

    ``args`` is the ``ModelHiddenParams`` group, to which the patched ``extract`` copied ``source_path``.
    """
    return int(common.self_meta(args.source_path)["dim"])


def guard_checkpoints(audio_net, args) -> None:
    """Refuse ``deformation.pth`` files whose audio network was trained on other features or weights."""
    common.guard_audio_net(audio_net, common.self_meta(args.source_path), "--audio_feature",
                           Path(args.source_path) / common.SELF_FEATURES)


def load_features(path: str, custom_aud: str) -> np.ndarray:
    """The features ``readTalkingPortraitDatasetInfo`` uses in place of its ``np.load``.

    Parameters
    ----------
    path : the data directory (``-s``)
    custom_aud : "" for self-driven; else ``--custom_aud``, relative to ``path`` as GaussianTalker reads it
        (an absolute path works too): a ``.npy`` from ``se4lip-extract`` or an audio file such as ``.wav``

    Returns
    -------
    np.ndarray float32 (n_frames, window, dim) on the CPU; the reader permutes it to (n_frames, dim, window)
    """
    aud = str(Path(path) / custom_aud) if custom_aud else ""
    feats = common.load_features(path, aud, ID_KEY)
    if aud:
        frames = len(json.loads((Path(path) / CUSTOM_SPLIT).read_text())["frames"])
        if len(feats) != frames:
            common.log.warning("%s: %d feature rows, but GaussianTalker renders custom audio with the %d cameras of "
                               "%s: the render %s", aud, len(feats), frames, CUSTOM_SPLIT,
                               "is cut to them" if len(feats) > frames else "stops where the audio ends")
    return feats


_IMPORT = engine.imports("gaussiantalker", "se4lip_gt")
_SE4LIP = "getattr(args, 'audio_feature', None) == 'se4lip'"
_CALL = ('        scene_info = sceneLoadTypeCallbacks2["ER-NeRF"](args.source_path, False, args.eval, '
         'custom_aud=custom_aud)')
_HEAD = 'def readTalkingPortraitDatasetInfo(path, white_background, eval, extension=".jpg",custom_aud=None):'
_SELF = "    aud_features = np.load(os.path.join(path, 'aud_ds.npy'))"
_CUSTOM = ["    if custom_aud:", "        aud_features = np.load(os.path.join(path, custom_aud))"]
_MARK = f"  {engine.MARK}"

RENDERER = engine.Renderer("cvlab-kaist/GaussianTalker", "250fb9347dfbd370463c575273cc293547aeeaef", (
    # --audio_feature, a ModelParams option: saved in cfg_args, restored by render.py's sentinel group
    insert_before("arguments/__init__.py", "the end of ModelParams.__init__",
                  ['        super().__init__(parser, "Loading Parameters", sentinel)'],
                  engine.marked("        ", f"self.audio_feature = {DEFAULT_FEATURE!r}"),
                  scope="class ModelParams(ParamGroup): "),
    # ...carried into the group the deformation network is built from (plain code: no import)
    insert_after("arguments/__init__.py", "the end of ModelHiddenParams.__init__",
                 ['        super().__init__(parser, "ModelHiddenParams")'],
                 engine.marked("    ", "def extract(self, args):")
                 + engine.marked("        ", "group = ParamGroup.extract(self, args)",
                                 f"group.audio_feature = getattr(args, 'audio_feature', None) or {DEFAULT_FEATURE!r}",
                                 f"if group.audio_feature not in {FEATURES!r}:")
                 + engine.marked("            ", f"raise ValueError(f'--audio_feature {{group.audio_feature}}: "
                                                  f"choose one of {', '.join(FEATURES)}')")
                 + engine.marked("        ", "group.source_path = getattr(args, 'source_path', None)", "return group"),
                 scope="class ModelHiddenParams(ParamGroup):"),
    Edit("scene/__init__.py", "the data set reader call in Scene.__init__", (_CALL,),
         (Swap(0, _CALL[:-1] + ", audio_feature=args.audio_feature)" + _MARK),), scope="class Scene:"),
    Edit("scene/talking_dataset_readers.py", "the heading of readTalkingPortraitDatasetInfo", (_HEAD,),
         (Swap(0, _HEAD[:-2] + ", audio_feature=None):" + _MARK),)),
    Edit("scene/talking_dataset_readers.py", "the self-driven aud_ds.npy load", (_SELF,),
         branch("    ", "if audio_feature == 'se4lip':", _IMPORT, "aud_features = se4lip_gt.load_features(path, '')")
         + or_else(_SELF)),
    Edit("scene/talking_dataset_readers.py", "the --custom_aud load", tuple(_CUSTOM),
         (0,) + branch("        ", "if audio_feature == 'se4lip':", _IMPORT,
                       "aud_features = se4lip_gt.load_features(path, custom_aud)") + or_else(_CUSTOM[1], 1)),
    insert_after("scene/deformation.py", "the audio_in_dim of Deformation.__init__",
                 ["        self.audio_in_dim = 29    "],
                 branch("        ", f"if {_SE4LIP}:", _IMPORT, "self.audio_in_dim = se4lip_gt.feature_dim(args)"),
                 scope="class Deformation(nn.Module):"),
    insert_after("scene/deformation.py", "the AudioNet construction in Deformation.__init__",
                 ["        self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)"],
                 branch("        ", f"if {_SE4LIP}:", _IMPORT, "se4lip_gt.guard_checkpoints(self.audio_net, args)"),
                 scope="class Deformation(nn.Module):"),
))
