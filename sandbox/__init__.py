"""The sandbox: runs untrusted metric code in isolated worker processes and returns results as data.

`engine` runs a pool of workers on this machine; `distributed` runs the same engine, one worker per
Ray actor, on a cluster (it alone imports Ray, an optional extra, and nothing imports it but the CLI).
"""
