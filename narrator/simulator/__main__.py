"""``python -m narrator.simulator``: serve simulated VLM replicas (see narrator.simulator.fleet)."""

import sys

from narrator.simulator.fleet import main

sys.exit(main())
