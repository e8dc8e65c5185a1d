"""`refinery eval`: compare strategies on a task through a live server.

Modules, one job each: `tasks` (task sets and their judges), `sandbox` (running HumanEval
programs contained), `runner` (strategies and requests), `summary` (accuracy with a bootstrap
interval, tokens, latency), `report` (table, JSON, Markdown, plot), `local_server` (a server
started for the run) and `command` (the command line).
"""

__all__: list[str] = []
