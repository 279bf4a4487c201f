"""SyncTalk: the patch table of ``se4lip-patch synctalk`` and what its inserted lines call.

Flag mapping: SyncTalk picks its features with ``--asr_model``. The patch adds ``--audio_feature`` as an
alias writing the same ``opt.asr_model``, and makes ``se4lip`` a value of both: ``--audio_feature se4lip``
and ``--asr_model se4lip`` are the same run. ``opt.asr_model`` is not saved with the model, so it is passed
again at test time, as for SyncTalk's own features.
"""

from __future__ import annotations

from . import common, engine, nerf
from .engine import branch, insert_after, insert_at, insert_before

# --audio_feature accepts SyncTalk's own feature names too, so one flag serves every run.
FEATURES = ("ave", "deepspeech", "esperanto", "hubert", common.FEATURE)
feature_dim, load_features, guard_checkpoints, mux_audio = nerf.bind("SyncTalk")
live_asr = nerf.live_asr

_IMPORT = engine.imports("synctalk", "se4lip_synctalk")
_SE4LIP = "self.opt.asr_model == 'se4lip'"
_LOAD = "aud_features = se4lip_synctalk.load_features(self.opt)"

RENDERER = engine.Renderer("ZiqiaoPeng/SyncTalk", "d2427a3d7301234ca417ef7660aaf5a24e5d89b0", (
    insert_after(
        "main.py", "the --asr_model argument",
        ["    parser.add_argument('--asr_model', type=str, default='deepspeech')"],
        engine.marked("    ", nerf.alias_line(FEATURES))),
    insert_at(
        "nerf_triplane/network.py", "the audio_in_dim choice in NeRFNetwork.__init__",
        ["        elif 'hubert' in self.opt.asr_model:",
         "            self.audio_in_dim = 1024",
         "        else:",
         "            self.audio_in_dim = 32"], 2,
        branch("        ", f"elif {_SE4LIP}:", _IMPORT, "self.audio_in_dim = se4lip_synctalk.feature_dim(self.opt)"),
        scope="class NeRFNetwork(NeRFRenderer):"),
    insert_after(
        "nerf_triplane/network.py", "the AudioNet construction in NeRFNetwork.__init__",
        ["        else:",
         "            self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)"],
        branch("        ", f"if {_SE4LIP}:", _IMPORT, "se4lip_synctalk.guard_checkpoints(self.audio_net, self.opt)"),
        scope="class NeRFNetwork(NeRFRenderer):"),
    *(insert_before("nerf_triplane/provider.py", what, anchor, branch("                ", f"elif {_SE4LIP}:", _IMPORT,
                                                                       _LOAD), scope="class NeRFDataset:")
      for what, anchor in (
          ("the self-driven fallback to aud.npy in NeRFDataset.__init__",
           ["                else:",
            "                    aud_features = np.load(os.path.join(self.root_path, 'aud.npy'))"]),
          ("the cross-driven np.load(self.opt.aud) in NeRFDataset.__init__",
           ["                else:", "                    try:",
            "                        aud_features = np.load(self.opt.aud)"]),
      )),
    nerf.live_edit("nerf_triplane", "synctalk"),
    insert_before(
        "nerf_triplane/utils.py", "the end of Trainer.test",
        ['        self.log(f"==> Finished Test.")'],
        branch("        ", f"if {_SE4LIP}:", _IMPORT,
               "se4lip_synctalk.mux_audio(self.opt, os.path.join(save_path, f'{name}.mp4'))"),
        scope="    def test(self, loader, save_path=None, name=None, write_image=False):"),
))
