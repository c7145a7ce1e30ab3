"""The DNS proxy: answers mesh names from the native name table and forwards
everything else upstream. This package holds its Python side."""

from pymesh.dnsproxy.answers import DEFAULT_TTL, Answer, answer

__all__ = ["DEFAULT_TTL", "Answer", "answer"]
