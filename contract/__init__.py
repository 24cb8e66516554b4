"""What the training job writes and the server reads, in one place: the ground floor.

train/ writes a self-describing model artifact and serve/ reads it; neither imports the other.
Both import this package, which imports neither (tests/test_architecture.py checks it):

- ``contract.artifact``: the artifact's format, version, file names and max batch; reading and
  validating its manifest; the program files' sha256.
- ``contract.preprocess``: the evaluation preprocessing both sides run on a photo (the colour
  conversion to 8-bit RGB, the resize and centre crop, ImageNet's mean and std), so that the
  model is served the pixels it was evaluated on.
- ``contract.precisions``: the precisions a model may be served in: names, autocast dtypes, and
  which need a program of their own in the artifact.
- ``contract.tensors``: the preprocessing's last step on tensors (uint8 pixels scaled and
  normalised on the model's device), the same arithmetic on both sides.

Standard library, numpy and Pillow at import; torch only inside the functions that need it (the
gunicorn master reads the precision names before any worker imports torch), except in
``contract.tensors``, which only the modules that run a model import.
"""
