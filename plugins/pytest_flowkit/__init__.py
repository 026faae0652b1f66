"""flowkit's pytest plugin (the ``pytest11`` entry point ``flowkit``): fixtures for plugin authors.

Installed with flowkit, so in any project where flowkit is installed these exist without a
``conftest.py``:

``flowkit_manager``
    A factory, :func:`flowkit.testing.make_manager`: ``flowkit_manager(plugins=[my_plugin])`` is a
    plugin manager with flowkit's built-in plugins and ``my_plugin``, and nothing else installed.
``flowkit_registry``
    The component registry of such a manager. Choose its plugins with the marker
    ``@pytest.mark.flowkit_plugins(my_plugin, builtins=True)``.

This module lives outside the ``flowkit`` package and imports nothing of flowkit when it is
imported: pytest imports ``pytest11`` plugins before pytest-cov starts measuring, and flowkit's
modules imported that early would show as unexecuted. The fixtures import :mod:`flowkit.testing`
when they run; the helpers (``make_manager``, ``check_component``, ``build_component``) live there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flowkit.registry import ComponentRegistry


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "flowkit_plugins(*plugins, builtins=True): plugins in the flowkit_registry fixture's registry",
    )


@pytest.fixture
def flowkit_manager() -> Any:
    """Factory of isolated plugin managers: ``flowkit_manager(plugins=[mod], builtins=True)``."""
    from flowkit.testing import make_manager

    return make_manager


@pytest.fixture
def flowkit_registry(request: Any) -> ComponentRegistry:
    """The registry of built-ins plus the plugins of ``@pytest.mark.flowkit_plugins(...)``."""
    from flowkit.testing import make_manager

    marker = request.node.get_closest_marker("flowkit_plugins")
    plugins: tuple[Any, ...] = marker.args if marker else ()
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    return make_manager(plugins, **options).registry
