"""The analysis layer: what several checks need to know, as pure functions over plain data.

Nothing here holds a session or changes a model: the loss model (chance, prior, constant-prediction and floor
losses, accuracy), parameter facts (the owning module, weight matrices, the standard init scale), the reading of
an LR range test, one walker over nested batches, the status order and the formatting of numbers for people.
Checks and passes import it; it imports nothing of theirs.
"""
