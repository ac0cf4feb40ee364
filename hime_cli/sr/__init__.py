"""The HIME super-resolution network, its deformable convolution, losses and model registry.

Import what you need from the submodules (``hime_cli.sr.registry.create_model``,
``hime_cli.sr.losses``); this package file stays empty so importing ``hime_cli.sr`` is cheap.
"""
