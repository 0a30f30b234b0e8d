"""Test doubles that are real enough to ship: the stand-in judge server (judge_server.py) used by the
tests, the judge benchmark and examples that need an endpoint without a GPU."""
