"""langcolor: language-conditioned colorization served as an NVIDIA Triton ensemble.

Subpackages map onto the repository's top-level folders:
``langcolor.client`` (client/), ``langcolor.export`` (export/), ``langcolor.server``
(server_config/) and ``langcolor.benchmarks`` (benchmarks/).
"""

__version__ = "0.1.0"
