"""The read-only web dashboard: models and aliases, jobs, drift, and the prediction log."""
