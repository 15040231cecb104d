"""The ops center and both ends of the sync (console script `ops-sync`).

Data flows: edge buffer -> `agent` -> HTTPS with mutual TLS -> `serve` (uvicorn, peer cert into
the ASGI TLS extension) -> `server` (routes) -> `center` (operations) -> `store` (metadata in
SQLite or PostgreSQL, through `metadb`) and `logstore` (Delta tables, through `deltatable`)
-> `logs` (the seed's pipeline.logs semantics).

    bundle.py       EDGE_BUNDLE encode / decode (the seed's format, plus OPSCENTER_CA)
    identity.py     the CA, CSRs, edge certificates, SPIFFE ids, the one SSLContext builder
    credentials.py  the edge's key, certificate and join state on disk (0600)
    agent.py        edge side: join once, renew, heartbeat, ship batches, ack after store
    client.py       the admin API's client (CLI, `edge publish --opscenter`)
    center.py       ops center operations: admin, join, renew, heartbeat, upload
    server.py       ops center HTTP routes; the only module that knows status codes
    serve.py        uvicorn with TLS and the peer certificate handed to the app
    store.py        metadata: publishes, edges, token hashes, log schemas, leases
    metadb.py       SQLite or PostgreSQL: connections, transactions, dialect, migrations
    logstore.py     log tables: checks, group commits, time-ordered reads, upkeep
    logschema.py    per-version schema rules, table generations, Delta storage types
    deltatable.py   one Delta table: appends with exactly-once marks, reads, retention
    compaction.py   size-tiered compaction of a Delta table's small files
    metrics.py      Prometheus metrics (/metrics)
    logs.py         limit / start-end / dataset / partition / export, the seed's warnings
    errors.py       the exception tree
    cli.py          ops-sync serve | add-edge | remove-edge | list-edges | logs | publishes
"""
