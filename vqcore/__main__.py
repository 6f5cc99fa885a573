"""``python -m vqcore``: the ``vqcore`` command line."""
import sys

from .cli import main

sys.exit(main())
