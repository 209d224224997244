"""placeholder"""
from .base import Check
class NonFinite(Check):
    id = "nonfinite"
    title = ""
