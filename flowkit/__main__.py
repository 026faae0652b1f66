"""``python -m flowkit``: the command line (for interpreters without the ``flowkit`` script, torchrun)."""

from flowkit.cli import main

if __name__ == "__main__":
    main()
