"""Renderer adapters: SE4Lip features in renderer checkouts patched by ``se4lip-patch``.

``engine`` applies and reverts anchored edits; each renderer module (``synctalk``, ``talkinggaussian``,
``ernerf``, ``radnerf``, ``gaussiantalker``, ``instag``) holds its table of edits and the functions its
inserted lines call, built on what the NeRF renderers share (``nerf``), what the two 3DGS renderers with
``--audio_extractor`` share (``gaussian``) and the feature files, sidecars, frame counts and checkpoint guard
every renderer shares (``common``). ``patch`` is the command line.
"""
