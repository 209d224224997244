"""Renderers: terminal, HTML, JSON and CSV views of a report. They compute nothing."""
