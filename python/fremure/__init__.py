"""fremure: FReMuRe video scene-graph generation on Action Genome, on the torch.ops.fremure kernels."""

__version__ = "0.1.0"
