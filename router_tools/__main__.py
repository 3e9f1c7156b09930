"""`python -m router_tools`: the command line (serve, stack, demo, space, policy, token)."""

import sys

from router_tools.cli import main

sys.exit(main())
