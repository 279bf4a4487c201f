"""Renderer adapters: SE4Lip features in SyncTalk and TalkingGaussian checkouts patched by ``se4lip-patch``.

``patch`` writes small anchored insertions into a user's checkout; the insertions call ``synctalk`` or
``talkinggaussian``, which share the feature-file and checkpoint logic of ``common``.
"""
