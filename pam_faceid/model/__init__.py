"""Building the face model (offline, torch): never imported by faceidd or the PAM helper.

dlib_format reads dlib's descriptor network file, resnet is that network in
torch, convert writes the shipped model folder from it (template fit, ONNX
export, provenance), training fine-tunes it, dataset caches aligned faces.
"""
