"""What the NeRF renderers share (SyncTalk, ER-NeRF, RAD-NeRF): one ``opt``, ``--asr_model``, ``--aud``.

All three descend from RAD-NeRF: ``main.py`` parses ``--asr_model`` into ``opt``, ``NeRFNetwork`` sizes its
``AudioNet`` from it, ``NeRFDataset`` loads ``<opt.path>/aud*.npy`` (self-driven) or ``opt.aud`` (test audio)
and ``Trainer.test`` writes a silent ``<name>.mp4``. ``Runtime`` is what their inserted lines call, and
``edits`` the patch table of ER-NeRF and RAD-NeRF (SyncTalk's own anchors differ a little).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import common, engine
from .engine import branch, insert_after, insert_at, insert_before, or_else

FLAG = "--asr_model"  # the renderers' own feature option; --audio_feature is added as its alias
ID_KEY = "aud_id"  # their data sets index self-driven features with each frame's aud_id


def alias_line(features: tuple[str, ...]) -> str:
    """The ``--audio_feature`` argument the patch adds to ``main.py``: plain argparse, no import.

    Its default is argparse's: the ``--asr_model`` action comes first, so its default wins and a run without
    either flag keeps the renderer's own default.
    """
    return (f"parser.add_argument('--audio_feature', dest='asr_model', choices={features!r}, "
            f"help='alias of --asr_model; se4lip: SE4Lip features (se4lip-features)')")


class Runtime:
    """The functions a patched NeRF renderer calls, all on its ``opt``; only with ``--asr_model se4lip``."""

    def __init__(self, renderer: str):
        self.renderer = renderer  # for messages

    def data_dir(self, opt) -> str | None:
        """The data directory, or None in RAD-NeRF's ``test.py`` (poses and ``--aud`` only)."""
        return getattr(opt, "path", None) or None

    def reference(self, opt) -> tuple[dict, Path]:
        """The sidecar that fixes the avatar's feature type, and its file.

        The data directory's ``aud_se4lip.npy`` (extracted first if missing); without a data directory the
        ``--aud`` features' own sidecar, which the checkpoint guard then compares with the trained model.
        """
        root = self.data_dir(opt)
        if root is not None:
            return common.self_meta(root), Path(root) / common.SELF_FEATURES
        aud = Path(opt.aud or "")
        if aud.suffix.lower() != ".npy":
            raise common.FeatureError(
                f"{aud}: without a data directory there is no record of the weights the avatar's features came "
                f"from, so test audio must be a .npy written by se4lip-extract with those weights "
                f"(`se4lip-extract {aud} -o FEATS.npy --weights ...`), or render with main.py DATA --test --aud "
                f"{aud}")
        _, meta = common.read_features(aud)
        return meta, aud

    def feature_dim(self, opt) -> int:
        """AudioNet's input dimension, from the sidecar of the avatar's SE4Lip features.

        Refuses ``--emb`` (class labels), which SE4Lip features are not. With ``--asr`` the data directory's
        features still fix the dimension: the live windows come from the same weights (``live.LiveASR``).
        """
        if getattr(opt, "emb", False):
            raise ValueError("--emb expects class labels; SE4Lip features are embeddings, drop --emb")
        return int(self.reference(opt)[0]["dim"])

    def load_features(self, opt) -> np.ndarray:
        """The features ``NeRFDataset`` (or ``NeRFDataset_Test``) uses in place of its ``np.load``.

        Returns
        -------
        np.ndarray float32 (n_frames, window, dim) on the CPU, like the renderer's own ``np.load``; the data
        set permutes it to (n_frames, dim, window) and its collate moves windows to the device
        """
        root = self.data_dir(opt)
        if root is not None:
            return common.load_features(root, opt.aud, ID_KEY)
        self.reference(opt)  # a .npy: checked with its sidecar (a .wav is refused here, saying why)
        return common.read_features(opt.aud)[0]

    def guard_checkpoints(self, audio_net, opt) -> None:
        """Refuse checkpoints whose audio network was trained on other features, or on other SE4Lip weights."""
        meta, where = self.reference(opt)
        common.guard_audio_net(audio_net, meta, FLAG, where)

    def mux_audio(self, opt, video: str | Path) -> Path | None:
        """Write ``<video stem>_audio.mp4``: the rendered video with the test audio (see ``common.mux_audio``)."""
        return common.mux_audio(opt.aud, video)


def bind(renderer: str):
    """``(feature_dim, load_features, guard_checkpoints, mux_audio)`` for a renderer module to expose."""
    runtime = Runtime(renderer)
    return runtime.feature_dim, runtime.load_features, runtime.guard_checkpoints, runtime.mux_audio


def live_asr(opt):
    """The real-time mode's audio path with ``--asr_model se4lip``: ``live.LiveASR``, imported only then.

    The avatar's features name the weights and layout: the data directory's ``aud_se4lip.npy``, or in
    RAD-NeRF's ``test.py`` (no data directory) the sidecar of the ``--aud`` features, as for the network.
    """
    from . import live

    reference, where = Runtime("the renderer").reference(opt)
    return live.LiveASR(opt, reference, where)


def live_edit(pkg: str, module: str) -> engine.Edit:
    """``NeRFGUI`` builds ``LiveASR`` instead of the renderer's ``ASR`` when se4lip is the chosen feature.

    Every renderer feature keeps its own ``ASR`` (the original line, under ``else:``).
    """
    build = "            self.asr = ASR(opt)"
    return engine.Edit(f"{pkg}/gui.py", "the ASR construction in NeRFGUI.__init__",
                       ("        if self.opt.asr:", build),
                       (0,) + branch("            ", "if self.opt.asr_model == 'se4lip':",
                                     engine.imports(module, f"se4lip_{module}"),
                                     f"self.asr = se4lip_{module}.live_asr(opt)") + or_else(build, 1),
                       scope="class NeRFGUI:")


def edits(pkg: str, module: str, features: tuple[str, ...], asr_default: str,
          dim_anchor: list[str]) -> tuple[engine.Edit, ...]:
    """The patch table of an ER-NeRF-like checkout (package ``pkg``: ``nerf_triplane`` or ``nerf``).

    ``dim_anchor`` is the last ``elif`` of ``NeRFNetwork``'s ``audio_in_dim`` chain, the two lines before
    its ``else:`` / ``self.audio_in_dim = 32``.
    """
    alias = f"se4lip_{module}"
    imp = engine.imports(module, alias)
    se4lip = "self.opt.asr_model == 'se4lip'"
    network, provider = f"{pkg}/network.py", f"{pkg}/provider.py"
    return (
        insert_after("main.py", "the --asr_model argument",
                     [f"    parser.add_argument('--asr_model', type=str, default={asr_default!r})"],
                     engine.marked("    ", alias_line(features))),
        insert_at(network, "the audio_in_dim choice in NeRFNetwork.__init__",
                  dim_anchor + ["        else:", "            self.audio_in_dim = 32"], 2,
                  branch("        ", f"elif {se4lip}:", imp, f"self.audio_in_dim = {alias}.feature_dim(self.opt)"),
                  scope="class NeRFNetwork(NeRFRenderer):"),
        insert_after(network, "the AudioNet construction in NeRFNetwork.__init__",
                     ["        self.audio_net = AudioNet(self.audio_in_dim, self.audio_dim)"],
                     branch("        ", f"if {se4lip}:", imp, f"{alias}.guard_checkpoints(self.audio_net, self.opt)"),
                     scope="class NeRFNetwork(NeRFRenderer):"),
        insert_before(provider, "the self-driven fallback to aud.npy in NeRFDataset.__init__",
                      ["                else:",
                       "                    aud_features = np.load(os.path.join(self.root_path, 'aud.npy'))"],
                      branch("                ", f"elif {se4lip}:", imp,
                             f"aud_features = {alias}.load_features(self.opt)"),
                      scope="class NeRFDataset:"),
        insert_before(provider, "the cross-driven np.load(self.opt.aud) in NeRFDataset.__init__",
                      ["            else:", "                aud_features = np.load(self.opt.aud)"],
                      branch("            ", f"elif {se4lip}:", imp, f"aud_features = {alias}.load_features(self.opt)"),
                      scope="class NeRFDataset:"),
        live_edit(pkg, module),
        insert_before(f"{pkg}/utils.py", "the end of Trainer.test", ['        self.log(f"==> Finished Test.")'],
                      branch("        ", f"if {se4lip}:", imp,
                             f"{alias}.mux_audio(self.opt, os.path.join(save_path, f'{{name}}.mp4'))"),
                      scope="    def test(self, loader, save_path=None, name=None, write_image=False):"),
    )

