"""The triage queue written for the tools reviewers use: Label Studio, CVAT, a cleaned COCO, stratified splits.

One module per target, each a plain function from the queue (`agent.evaluation.triage`) and the
dataset to the files that tool imports as they are. Imports only from `agent.evaluation.triage`,
`agent.data` and `agent.errors`.
"""
