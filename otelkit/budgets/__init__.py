"""Performance budgets: one file enforced on live traces, compiled to Prometheus alerts,
and checked in CI. See ``docs/budgets.md``."""
