"""metricsmith's agent: everything but the sandbox, in one package per layer.

Each subpackage is one layer with one owner. A layer imports only the layers below it, and nothing
imports `cli`; `pyproject.toml`'s import-linter contracts check this in CI (`lint-imports`):

    cli          the commands: parse, call one function below, render (one module per command group)
    sessions     batch jobs and the chat REPL's session, which run many authoring jobs
    review       the human gate: deciding on candidates, viewing and editing them
    authoring    prompts, extraction, validation, repair and the loop that ties them, for one idea
    evaluation   how well scores find label errors (AP and friends), the learned combination, the report
    metrics      the metric file contract, the library, scoring through the sandbox, score files
    llm | data   the one-method model boundary with its backends and transcripts | the COCO layer,
                 the demo dataset and label-error records; neither knows the other
    errors, resources   leaves: the error classes, and where shipped files and the cache live

Why this order: authoring needs metrics (to validate a draft) and evaluation (to measure it);
review works on what authoring left; sessions run authoring and review many times; the cli is the
only place that talks to a person. `sandbox/` stands apart: it imports nothing from `agent`.
"""
