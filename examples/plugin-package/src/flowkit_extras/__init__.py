"""flowkit-extras: an example third-party flowkit plugin.

It registers two fixed-step ODE simulators, ``ralston`` (second order) and ``rk38`` (Kutta's 3/8
rule, fourth order), and a schedule, ``polynomial``. flowkit finds this module through the
``flowkit`` entry point in ``pyproject.toml`` and calls :func:`flowkit_register`; nothing else
connects the two packages.

The hook imports the component modules inside the function, so listing plugins (``flowkit plugins``)
stays cheap and a failure in one module is reported as this plugin's problem.
"""

from flowkit import hookimpl

__version__ = "0.3.0"


@hookimpl
def flowkit_register(registry):
    """Register the ``ralston`` and ``rk38`` simulators and the ``polynomial`` schedule."""
    from flowkit_extras.schedules import PolynomialSchedule
    from flowkit_extras.simulators import RalstonSimulator, RK38Simulator

    registry.add("simulator", "ralston", RalstonSimulator)
    registry.add("simulator", "rk38", RK38Simulator)
    registry.add("schedule", "polynomial", PolynomialSchedule)
