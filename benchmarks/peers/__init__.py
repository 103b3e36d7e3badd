"""The peers preset (``python -m benchmarks.run --preset peers``): fastrnn and torch against onnxruntime, OpenVINO
and JAX on the same weights, outputs checked first, timed in interleaved rounds (issue 21, part 5).

``environment`` caps every runtime at the same thread count and finds which peers are installed
(``scripts/setup_peers.sh`` installs them); ``contender`` is what one implementation of a case offers the gate
and the timer; ``onnx_runtimes`` and ``jax_scan`` build the peers from torch's module; ``runner`` checks and times
one case; ``plot`` draws peers.png.
"""
