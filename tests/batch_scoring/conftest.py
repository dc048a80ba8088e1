"""Fixtures of the scoring tests (the lake they build is described in scoring_frames.py)."""

from scoring_frames import scored, scoring_lake  # noqa: F401  (package-scoped fixtures)
