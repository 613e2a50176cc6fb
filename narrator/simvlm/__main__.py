"""``python -m narrator.simvlm``: serve simulated VLM replicas (see narrator.simvlm.fleet)."""

import sys

from narrator.simvlm.fleet import main

sys.exit(main())
