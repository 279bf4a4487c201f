"""Renderer adapters: patch SyncTalk and TalkingGaussian checkouts to read SE4Lip features."""
