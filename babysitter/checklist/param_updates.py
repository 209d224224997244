"""placeholder"""
from .base import Check
class ParamUpdates(Check):
    id = "param_updates"
    title = ""
