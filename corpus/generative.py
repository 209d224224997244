"""(filled in by the corpus work)"""
CASES: list = []
FAULTS: list = []
