"""Figures: 12-lead ECG plots on ECG paper, traversals and data-set summaries.

Everything here draws with matplotlib's object-oriented API on figures that
pyplot does not manage, so it runs headless (Agg) and leaks no global state.
"""
