"""Evaluation: how well a ranking finds label errors (`ranking`: AP, AUROC, precision@K, recall), the
learned combination of metrics (`stacking`), the triage queue built from them (`triage`) and its
exports for review tools (`exports/`), and the HTML report with its template.

May import `agent.metrics`, `agent.data` and the leaves. Pure maths, apart from the report's and the
exports' files.
"""
