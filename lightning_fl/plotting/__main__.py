"""``python -m lightning_fl.plotting`` is ``lightning-fl-plot``."""

import sys

from lightning_fl.plotting.cli import main

sys.exit(main())
