"""`python -m proxy ...` is `gantry-proxy ...`."""

import sys

from proxy.cli import main

sys.exit(main())
