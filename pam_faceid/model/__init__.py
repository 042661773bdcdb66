"""Building the face model (offline, torch): the PAM helper never imports it, faceidd only for model.backend torch.

dlib_format reads dlib's descriptor network file, resnet is that network in
torch, template fits the five-point alignment template, convert writes the
shipped model folder (ONNX export, model.json, provenance), training
fine-tunes the network (faceid train-base), dataset caches aligned faces.
Evaluation (pam_faceid.evaluate) and the negative bank (pam_faceid.negatives)
stay at the package's top level: faceid evaluate, calibrate and retrain use
them at run time.
"""
