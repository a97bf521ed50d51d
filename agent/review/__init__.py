"""The human gate: approval and rejection bound to a code hash (`gate`), showing a candidate (`view`) and
editing it with validation again (`editing`). Nothing enters the library except through `gate`.

May import `agent.authoring` and everything below it.
"""
