"""metricsmith's agent layer: dataset, metric files, scoring jobs and the command line."""
