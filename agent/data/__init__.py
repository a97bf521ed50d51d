"""The data layer: COCO datasets (`coco`), the procedural demo dataset (`demo`) and label-error records.

Pure of models and metrics: imports only `agent.errors`. Nothing here knows about the sandbox.
"""
