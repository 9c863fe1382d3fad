"""Submission intake: the submission.toml schema (manifest), the dry run in the sandbox
(validate), installation with archive checks (submit) and discovery of the competitors
(entries). Import the submodules."""
