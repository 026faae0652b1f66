"""Built-in device backends: ``cpu``, ``cuda`` and ``auto``."""

from flowkit import hookimpl


@hookimpl
def flowkit_register(registry):
    """Register the device backends ``cpu``, ``cuda`` and ``auto``."""
    from flowkit_devices.backends import AutoBackend, CPUBackend, CUDABackend

    registry.add("device", "cpu", CPUBackend)
    registry.add("device", "cuda", CUDABackend)
    registry.add("device", "auto", AutoBackend)
