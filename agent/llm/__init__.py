"""The model boundary: `ModelBackend` is one method (`model`), its backends (`backends/`: openai, local,
replay and the scripted test model), conversations, transcripts and pricing.

Knows nothing of datasets or metrics: may import only the leaves (`agent.errors`).
"""
