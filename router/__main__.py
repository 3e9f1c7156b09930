"""`python -m router`."""

import sys

from router_tools.cli import main

sys.exit(main())
