"""Vision at run time: camera -> face -> embedding -> liveness.

Frame sources (V4L2, a video file, a folder of images), face detection and
alignment, the ONNX embedder, the per-user head and the liveness cues. The
helper may import only ``camera`` from here; the rest is the daemon's.
"""
