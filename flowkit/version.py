"""flowkit's version, in a module of its own: the engine records it in every resolved pipeline, and
importing it from the package (``flowkit/__init__.py``, which loads the Python API on demand) would
make the engine and the API import each other."""

__version__ = "0.1.0"
