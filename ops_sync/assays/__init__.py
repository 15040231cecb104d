"""Assays: drift detection over the ops center's synced logs (the seed's model insights).

`metrics` (binning, aggregates, PSI / max-diff / sum-diff; pure), `definition` (what an assay
is, checked), `records` (its rows in the metadata database), `service` (`Assays`, which the
server and the scheduler call).
"""
