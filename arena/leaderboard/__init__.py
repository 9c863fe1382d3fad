"""Ranking and rendering: terminal, CSV/JSON, a static HTML page with images."""
