"""The `metricsmith` command line: `main` (the lazy command table and the error handling), one module per
command group, `console` (exit codes and consoles) and `doctor`. Nothing else imports this package.
"""
