"""Scoring: the grid of jobs, budget enforcement, metrics, failure policy, the results store."""
