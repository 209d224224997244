"""Passes: the runs over the model whose results several checks read (evidence), each computed once per session.

Each pass is a function ``session -> frozen evidence`` that starts from the user's state (the session resets the
model before and after it). Which passes exist, and which instruments ride along on each, is the one table in
``babysitter.evidence``.
"""
