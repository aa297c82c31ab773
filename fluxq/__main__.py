"""``python -m fluxq``: the same command line as the ``fluxq`` script."""

from fluxq.cli import main

main()
