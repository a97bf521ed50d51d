"""Metrics: the metric file contract, the versioned library, scoring through the sandbox, score files,
and the nearest-neighbour step of feature metrics.

May import `agent.data`, `agent.errors`, `agent.resources` and `sandbox`.
"""
