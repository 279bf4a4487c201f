"""RAD-NeRF: the patch table of ``se4lip-patch radnerf`` and what its inserted lines call.

Flag mapping as SyncTalk's, in ``main.py`` and ``test.py``: ``--audio_feature`` is an alias of ``--asr_model``
(whose default is an Esperanto wav2vec2 model name) and ``se4lip`` a value of both. ``test.py`` renders from a
pose file and ``--aud`` without a data directory, so there the features' own sidecar sizes the network and
the checkpoint guard checks it against the trained model; test audio must then be a ``.npy``.
"""

from __future__ import annotations

from . import common, engine, nerf
from .engine import Edit, branch, or_else

FEATURES = ("deepspeech", "esperanto", common.FEATURE)
feature_dim, load_features, guard_checkpoints, mux_audio = nerf.bind("RAD-NeRF")
live_asr = nerf.live_asr

_ASR = "cpierse/wav2vec2-large-xlsr-53-esperanto"
_MAIN = nerf.edits("nerf", "radnerf", FEATURES, _ASR,
                   ["        elif 'deepspeech' in self.opt.asr_model:", "            self.audio_in_dim = 29"])
_TEST_LOAD = "            aud_features = np.load(self.opt.aud)"

RENDERER = engine.Renderer("ashawkey/RAD-NeRF", "0de5ed259592592294677ad6cf7605f478a0de57", (
    *_MAIN,
    engine.insert_after("test.py", "the --asr_model argument of test.py",
                        [f"    parser.add_argument('--asr_model', type=str, default={_ASR!r})"],
                        engine.marked("    ", nerf.alias_line(FEATURES))),
    Edit("nerf/provider.py", "the np.load(self.opt.aud) of NeRFDataset_Test (test.py)", (_TEST_LOAD,),
         branch("            ", "if self.opt.asr_model == 'se4lip':",
                engine.imports("radnerf", "se4lip_radnerf"),
                "aud_features = se4lip_radnerf.load_features(self.opt)") + or_else(_TEST_LOAD),
         scope="class NeRFDataset_Test:"),
))
