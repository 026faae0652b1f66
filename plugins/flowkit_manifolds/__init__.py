"""Riemannian flow matching (Chen & Lipman 2023) on the sphere ``S^d`` and the flat torus.

* path ``geodesic``: ``x_t = exp_x0(t log_x0(z))`` from the uniform (sphere) or wrapped-uniform (torus)
  prior, with its log-density, and ``project`` onto the manifold;
* model ``tangent-mlp``: an MLP whose output is projected onto the tangent space;
* simulators ``manifold-euler``, ``manifold-midpoint``, ``manifold-rk4``: every stage on the manifold;
* metric ``geodesic-w2``: exact W2 with the geodesic cost;
* datasets ``vmf-mixture`` (on ``S^2``) and ``torus-checkerboard``, with exact densities.

Importing this package is cheap: the component modules load when the registry asks for them.
"""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the geodesic path, the tangent network, the projected solvers, the metric and the data."""
    from flowkit_manifolds.datasets import TorusCheckerboard, VMFMixture
    from flowkit_manifolds.metric import GeodesicW2
    from flowkit_manifolds.network import TangentMLP
    from flowkit_manifolds.path import GeodesicPath
    from flowkit_manifolds.simulators import ManifoldEuler, ManifoldMidpoint, ManifoldRK4

    registry.add("path", "geodesic", GeodesicPath)
    registry.add("model", "tangent-mlp", TangentMLP)
    registry.add("simulator", "manifold-euler", ManifoldEuler)
    registry.add("simulator", "manifold-midpoint", ManifoldMidpoint)
    registry.add("simulator", "manifold-rk4", ManifoldRK4)
    registry.add("metric", "geodesic-w2", GeodesicW2)
    registry.add("dataset", "vmf-mixture", VMFMixture)
    registry.add("dataset", "torus-checkerboard", TorusCheckerboard)
