"""A run's results rendered from results.json alone, so `adfq-sim report` can redo them without
recomputing: results.csv (`tables`), the Pareto front and recommendation (`summary`), the figures
(`plots`), and report.md / report.html (`report`, `document`, `render`)."""
