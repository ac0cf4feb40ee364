"""The HIME super-resolution network, its deformable convolution, losses and model registry.

Import what you need from the submodules (``hime_cli.sr.registry.create_model``,
``hime_cli.sr.losses``). This file is the one place that imports the architectures: each registers
itself with :func:`hime_cli.sr.registry.register_model` (the registry imports none of them).
"""

from hime_cli.sr import hime as _hime  # noqa: F401  (registers hime_small_x4, hime_test_x4, ...)
