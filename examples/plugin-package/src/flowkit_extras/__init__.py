"""flowkit-extras: an example third-party flowkit plugin.

It registers two fixed-step ODE simulators, ``midpoint`` (second order) and ``rk4`` (fourth order),
and a schedule, ``polynomial``. flowkit finds this module through the ``flowkit`` entry point in
``pyproject.toml`` and calls :func:`flowkit_register`; nothing else connects the two packages.

The hook imports the component modules inside the function, so listing plugins (``flowkit plugins``)
stays cheap and a failure in one module is reported as this plugin's problem.
"""

from flowkit import hookimpl

__version__ = "0.2.0"


@hookimpl
def flowkit_register(registry):
    """Register the ``midpoint`` and ``rk4`` simulators and the ``polynomial`` schedule."""
    from flowkit_extras.schedules import PolynomialSchedule
    from flowkit_extras.simulators import MidpointSimulator, RK4Simulator

    registry.add("simulator", "midpoint", MidpointSimulator)
    registry.add("simulator", "rk4", RK4Simulator)
    registry.add("schedule", "polynomial", PolynomialSchedule)
