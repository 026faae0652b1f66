"""``python -m flowkit``: the command line (for interpreters without the ``flowkit`` script, torchrun)."""

from flowkit.cli import launched_main

if __name__ == "__main__":
    launched_main()
