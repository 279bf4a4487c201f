"""ER-NeRF: the patch table of ``se4lip-patch ernerf`` and what its inserted lines call.

Flag mapping as SyncTalk's: ``--audio_feature`` is an alias of ``--asr_model`` and ``se4lip`` a value of both.
ER-NeRF does not save the feature type with the model, so it is passed again at test time. Its files use
CRLF line endings upstream; the patch keeps them.
"""

from __future__ import annotations

from . import common, engine, nerf

FEATURES = ("deepspeech", "esperanto", "hubert", common.FEATURE)
feature_dim, load_features, guard_checkpoints, mux_audio = nerf.bind("ER-NeRF")
live_asr = nerf.live_asr

RENDERER = engine.Renderer("Fictionarry/ER-NeRF", "0cf72d8fb598d321de86b445bcd363cc2f6346a5", nerf.edits(
    "nerf_triplane", "ernerf", FEATURES, "deepspeech",
    ["        elif 'hubert' in self.opt.asr_model:", "            self.audio_in_dim = 1024"]))
