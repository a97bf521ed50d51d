"""Sessions that run many authoring jobs: the batch job and its config, the chat session and its replay.

May import `agent.review` and everything below it; never `agent.cli`.
"""
