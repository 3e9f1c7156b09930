"""`python -m router_service`: the service, as router/Dockerfile runs it."""

import sys

from router_service._cli import main

sys.exit(main())
