"""Discrete flow matching (Gat et al. 2024): categorical data moved by a continuous-time Markov chain.

* datasets ``tokens`` (integer arrays from a file), ``checkerboard-grid`` (a checkerboard on an
  ``N x N`` grid, two tokens) and ``digits-tokens`` (the 8x8 digits as 64 tokens of 17 levels, labelled);
* path ``mixture``: each token the data's with probability ``kappa_t = t^n``, else the source's
  (``mask`` or ``uniform``);
* losses ``cross-entropy`` and ``generalized-kl``, which train the role ``posterior`` (log p_{1|t});
* model ``token-mlp``: token embeddings through an MLP to logits ``(B, L, V)``;
* dynamics ``ctmc`` and simulator ``discrete-euler``: the jump process and its Euler sampler;
* metric ``total-variation``: between the empirical laws of two sets of sequences.

Importing this package is cheap: the component modules load when the registry asks for them.
"""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the discrete datasets, path, losses, network, dynamics, sampler and metric."""
    from flowkit_discrete.data import CheckerboardGrid, DigitTokens, TokenFile
    from flowkit_discrete.losses import CrossEntropyLoss, GeneralizedKLLoss
    from flowkit_discrete.metrics import TotalVariation
    from flowkit_discrete.nets import TokenMLP
    from flowkit_discrete.path import MixturePath
    from flowkit_discrete.sampler import CTMCDynamics, DiscreteEuler

    registry.add("dataset", "tokens", TokenFile)
    registry.add("dataset", "checkerboard-grid", CheckerboardGrid)
    registry.add("dataset", "digits-tokens", DigitTokens)
    registry.add("path", "mixture", MixturePath)
    registry.add("loss", "cross-entropy", CrossEntropyLoss)
    registry.add("loss", "generalized-kl", GeneralizedKLLoss)
    registry.add("model", "token-mlp", TokenMLP)
    registry.add("dynamics", "ctmc", CTMCDynamics)
    registry.add("simulator", "discrete-euler", DiscreteEuler)
    registry.add("metric", "total-variation", TotalVariation)
