"""The tools around the runtime: CLI, local stack, local edge, demo, Space ops, cost,
and the service's HTTP server. They import `router`; `router` never imports them."""
