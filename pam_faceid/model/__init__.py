"""Building and measuring face models (offline): what faceid train-base, evaluate, calibrate and retrain run.

dlib_format reads dlib's descriptor network file, resnet is that network in
torch, template fits the five-point alignment template, convert writes the
shipped model folder (ONNX export, model.json, provenance), training
fine-tunes the network, dataset caches aligned faces. metrics holds the one
definition of threshold and TAR at a FAR; evaluate scores labelled pairs and
folders; negatives builds the impostor bank; retrain fits a per-user head.
Neither the helper nor the daemon imports this package (faceidd only reaches
resnet for model.backend torch).
"""
