"""pam_faceid: face unlock for Linux through PAM.

Data flows one way: camera -> faces -> embedder -> decision (daemon). The PAM
helper imports only config, camera and protocol, so it never pulls torch.
"""

__version__ = "0.1.0"
