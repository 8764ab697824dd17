"""Rendering of run results (tables today; plots and reports with the reports issue)."""
