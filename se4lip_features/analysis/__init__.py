"""Analysis: the renderer-proxy landmark probe, acoustic baselines and the phoneme-viseme study."""
