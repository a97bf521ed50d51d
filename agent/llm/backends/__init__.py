"""The backends behind `agent.llm.model.ModelBackend`: real ones (`openai`, `local`) beside the ones that
replay a transcript (`replay`) or a script (`scripted`), all with the same one method."""
