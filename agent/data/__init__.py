"""The data layer: COCO datasets (`coco`), their facts in numbers (`facts`), the procedural demo dataset (`demo`)
and label-error records (`label_errors`).

Pure of models and metrics: imports only `agent.errors`. Nothing here knows about the sandbox.
"""
