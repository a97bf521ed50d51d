"""Authoring one metric for one idea: prompts (`prompting`), extraction of code from replies (`extract`),
sandbox validation and its item set, repair prompts, the loop (`loop`), the job that wires a run
(`job`) and the candidate records the loop leaves.

May import `agent.evaluation`, `agent.metrics`, `agent.llm`, `agent.data` and the leaves.
"""
