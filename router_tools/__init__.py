"""The tools around the runtime and the service (`python -m router_tools`): the CLI, the local
stack and its stand-in for Hugging Face's edge, the demo, Space operations, cost and cron. They
import `router` and `router_service` through their public names; neither imports them."""
