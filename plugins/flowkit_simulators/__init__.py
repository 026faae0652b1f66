"""Built-in simulators, dynamics and time grids.

* simulators: ``euler``, ``heun``, ``midpoint`` and ``rk4`` (fixed-step ODEs), ``euler-maruyama`` (SDEs,
  and ODEs as the noise-free case), ``dopri5`` (adaptive Dormand–Prince 5(4) for ODEs, with error
  control; not capturable), and for the probability-flow ODE of a Gaussian path ``dpm-solver++`` (2M,
  data prediction) and ``edm`` (Heun in ``sigma``, with churn);
* dynamics: ``flow`` (ODE of a velocity), ``extension-sde`` (velocity + score, same marginals for any
  ``sigma_t``), ``langevin`` (score of a fixed distribution);
* time grids: ``uniform``, ``power`` (steps concentrated near the data end ``t = 1``), ``shift``
  (diffusers' flow-matching sigmas) and ``karras``
  (EDM's noise levels ``sigma = beta / alpha``, through a Gaussian path's schedule).

Importing this package is cheap: the component modules load when the registry asks for them.
"""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the simulators, dynamics and time grids of this package."""
    from flowkit_simulators.adaptive import Dopri5Simulator
    from flowkit_simulators.diffusion import DPMSolverPlusPlus, EDMSampler
    from flowkit_simulators.dynamics import ExtensionSDE, FlowODE, LangevinSDE
    from flowkit_simulators.simulators import (
        EulerMaruyamaSimulator,
        EulerSimulator,
        HeunSimulator,
        MidpointSimulator,
        RK4Simulator,
    )
    from flowkit_simulators.timegrids import KarrasGrid, PowerGrid, ShiftGrid, UniformGrid

    registry.add("simulator", "euler", EulerSimulator)
    registry.add("simulator", "heun", HeunSimulator)
    registry.add("simulator", "midpoint", MidpointSimulator)
    registry.add("simulator", "rk4", RK4Simulator)
    registry.add("simulator", "euler-maruyama", EulerMaruyamaSimulator)
    registry.add("simulator", "dopri5", Dopri5Simulator)
    registry.add("simulator", "dpm-solver++", DPMSolverPlusPlus)
    registry.add("simulator", "edm", EDMSampler)
    registry.add("dynamics", "flow", FlowODE)
    registry.add("dynamics", "extension-sde", ExtensionSDE)
    registry.add("dynamics", "langevin", LangevinSDE)
    registry.add("timegrid", "uniform", UniformGrid)
    registry.add("timegrid", "power", PowerGrid)
    registry.add("timegrid", "karras", KarrasGrid)
    registry.add("timegrid", "shift", ShiftGrid)
