"""fremure: FReMuRe video scene-graph generation on Action Genome, on the torch.ops.fremure kernels."""

from ._version import __version__
