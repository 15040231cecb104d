"""The dashboard's HTML, as plain string templates (no template engine): every value goes
through `h` (HTML escaping). No inline script or style: the pages pass what the JavaScript
needs in `data-*` attributes, so the Content-Security-Policy can be `'self'` only."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

from ops_sync.ui.data import COLUMNS

UPLOT = "vendor/uplot-1.6.32"
NAV = [("fleet", "/ui/", "Fleet"), ("logs", "/ui/logs", "Logs"), ("assays", "/ui/assays", "Assays")]
NAV += [("add", "/ui/edges/new", "Add an edge")]


def h(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{h(csrf)}">'


def layout(title: str, body: str, csrf: str | None = None, current: str = "") -> str:
    nav = ""
    if csrf is not None:
        links = "".join(
            f'<li><a href="{href}"{" aria-current=page" if key == current else ""}>'
            f"{h(label)}</a></li>"
            for key, href, label in NAV
        )
        signout = (
            f'<form method="post" action="/ui/signout" class="signout">{csrf_field(csrf)}'
            '<button type="submit">Sign out</button></form>'
        )
        nav = f'<nav aria-label="Main"><ul>{links}</ul>{signout}</nav>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · ops center</title>"
        f'<link rel="stylesheet" href="/ui/static/{UPLOT}/uPlot.min.css">'
        '<link rel="stylesheet" href="/ui/static/app.css">'
        f'<script src="/ui/static/{UPLOT}/uPlot.iife.min.js" defer></script>'
        '<script src="/ui/static/app.js" defer></script></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        f'<header><p class="brand">Ops center</p>{nav}</header>'
        f'<main id="main"><h1>{h(title)}</h1>{body}</main></body></html>'
    )


def alert(message: str | None, kind: str = "error") -> str:
    if not message:
        return ""
    role = "alert" if kind == "error" else "status"
    return f'<p class="notice {kind}" role="{role}">{h(message)}</p>'


def signin(csrf: str, error: str | None = None) -> str:
    body = (
        alert(error)
        + '<form method="post" action="/ui/signin" class="card">'
        + csrf_field(csrf)
        + '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">Sign in</button></form>'
    )
    return layout("Sign in", body)


def _cells(row: dict[str, Any]) -> str:
    cells = []
    for key, _ in COLUMNS:
        text = h(row["cells"][key])
        if key == "name":
            text = f'<a href="/ui/edges/{h(row["name"])}">{text}</a>'
        cells.append(f'<td data-col="{key}">{text}</td>')
    remove = f'<a href="/ui/edges/{h(row["name"])}/remove">Remove</a>'
    return "".join(cells) + f"<td>{remove}</td>"


def fleet(rows: list[dict[str, Any]], csrf: str, notice: str | None = None) -> str:
    heads = "".join(
        f'<th scope="col" aria-sort="none"><button type="button" data-sort="{key}">'
        f"{h(label)}</button></th>"
        for key, label in COLUMNS
    )
    body_rows = "".join(f'<tr data-name="{h(r["name"])}">{_cells(r)}</tr>' for r in rows)
    empty = "" if rows else '<p id="fleet-empty">No edges yet: add one.</p>'
    body = (
        alert(notice, "ok") + '<div class="toolbar"><label for="fleet-filter">Filter edges</label>'
        '<input id="fleet-filter" type="search" placeholder="name, tag, health..."> '
        '<span id="fleet-updated" role="status" aria-live="polite"></span></div>'
        + empty
        + '<div class="scroll"><table id="fleet" data-source="/ui/api/fleet">'
        f"<caption>Enrolled edges ({len(rows)})</caption>"
        f'<thead><tr>{heads}<th scope="col">Actions</th></tr></thead>'
        f"<tbody>{body_rows}</tbody></table></div>"
    )
    return layout("Fleet", body, csrf, "fleet")


def _facts(pairs: list[tuple[str, Any]]) -> str:
    return (
        "<dl class='facts'>"
        + "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in pairs)
        + "</dl>"
    )


CHARTS = [
    ("inferences", "Inferences per minute", "logs", ["inferences"]),
    ("anomaly", "Anomaly rate", "logs", ["anomaly_rate"]),
    ("latency", "Latency p50 / p99 (ms)", "logs", ["p50_ms", "p99_ms"]),
    ("lag", "Sync lag (s)", "heartbeats", ["sync_lag_s"]),
]


def chart(key: str, title: str, source: str, fields: list[str], url: str) -> str:
    return (
        f'<figure class="chart"><figcaption id="c-{key}">{h(title)}</figcaption>'
        f'<div class="plot" role="img" aria-labelledby="c-{key}" data-chart="{key}" '
        f'data-url="{h(url)}" data-source="{source}" data-fields="{",".join(fields)}" '
        'data-points="0"></div></figure>'
    )


RANGES = [("15", "15 minutes"), ("60", "hour"), ("360", "6 hours"), ("1440", "24 hours")]


def edge(
    e: dict[str, Any], row: dict[str, Any], logs: list[dict[str, str]], csrf: str, minutes: int
) -> str:
    url = f"/ui/api/edges/{e['name']}/series?minutes={minutes}"
    span = dict(RANGES).get(str(minutes), f"{minutes} minutes")
    ranges = (
        f'<form method="get" action="/ui/edges/{h(e["name"])}" class="filters">'
        + _select("minutes", "Charts over the last", RANGES, str(minutes))
        + '<button type="submit">Show</button></form>'
    )
    cells = row["cells"]
    facts = _facts(
        [
            ("Publish", cells["publish"]),
            ("Tags", cells["tags"]),
            ("Desired version", cells["desired"]),
            ("Running version", cells["running"]),
            ("Last seen", cells["last_seen"]),
            ("Health", cells["health"]),
            ("Credentials", cells["credentials"]),
            ("Buffer depth", cells["buffer"]),
            ("Drops", cells["drops"]),
            ("Sync lag", cells["sync_lag"]),
            ("SPIFFE id", e.get("spiffe_id")),
        ]
    )
    charts = "".join(chart(k, t, s, f, url) for k, t, s, f in CHARTS)
    rows = "".join(
        f"<tr><td>{h(r['time'])}</td><td>{h(r['latency'])}</td><td>{h(r['anomaly'])}</td>"
        f"<td><code>{h(r['out'])}</code></td></tr>"
        for r in logs
    )
    logs_link = "/ui/logs?" + urlencode({"pipeline": e["pipeline_name"], "edge": e["name"]})
    table = (
        '<div class="scroll"><table id="recent-logs"><caption>Its newest logs</caption><thead><tr>'
        '<th scope="col">Time</th><th scope="col">Latency</th><th scope="col">Anomalies</th>'
        f'<th scope="col">Outputs</th></tr></thead><tbody>{rows}</tbody></table></div>'
        if logs
        else "<p>No logs synced yet.</p>"
    )
    body = (
        facts
        + f"<h2>Last {h(span)}</h2>{ranges}"
        + '<p class="hint" id="series-note" role="status"></p>'
        + f'<div class="charts">{charts}</div>'
        + f'<h2>Recent logs</h2>{table}<p><a href="{h(logs_link)}">All its logs</a></p>'
    )
    return layout(f"Edge {e['name']}", body, csrf, "fleet")


def _select(name: str, label: str, options: list[tuple[str, str]], chosen: str) -> str:
    items = "".join(
        f'<option value="{h(v)}"{" selected" if v == chosen else ""}>{h(t)}</option>'
        for v, t in options
    )
    return (
        f'<label for="f-{name}">{h(label)}</label>'
        f'<select id="f-{name}" name="{name}">{items}</select>'
    )


def _input(name: str, label: str, value: str, kind: str = "text", extra: str = "") -> str:
    return (
        f'<label for="f-{name}">{h(label)}</label>'
        f'<input id="f-{name}" name="{name}" type="{kind}" value="{h(value)}" {extra}>'
    )


def log_viewer(
    form: dict[str, str],
    pipelines: list[str],
    edges: list[str],
    result: tuple[list[str], list[dict[str, Any]]] | None,
    warnings: list[str],
    error: str | None,
    csrf: str,
) -> str:
    fields = (
        _select("pipeline", "Pipeline", [(p, p) for p in pipelines], form.get("pipeline", ""))
        + _select(
            "edge", "Edge", [("", "All edges")] + [(e, e) for e in edges], form.get("edge", "")
        )
        + _input("start", "From (UTC)", form.get("start", ""), "datetime-local", 'step="1"')
        + _input("end", "To (UTC)", form.get("end", ""), "datetime-local", 'step="1"')
        + _input(
            "dataset",
            "Datasets (comma-separated)",
            form.get("dataset", ""),
            extra='placeholder="time,in,out,anomaly,metadata"',
        )
        + _input("limit", "Limit", form.get("limit", "100"), "number", 'min="1" max="1000000"')
    )
    body = (
        '<form method="get" action="/ui/logs" class="filters">'
        f'{fields}<button type="submit">Show logs</button></form>'
        + alert(error)
        + "".join(alert(w, "warning") for w in warnings)
    )
    if result is not None:
        columns, rows = result
        query = h(urlencode({k: v for k, v in form.items() if v}))
        link = f"/ui/logs/download?{query}&amp;format="
        body += (
            '<p class="downloads">Download: '
            f'<a id="download-ndjson" href="{link}ndjson">NDJSON</a> · '
            f'<a id="download-arrow" href="{link}arrow">Arrow</a></p>'
        )
        heads = "".join(f'<th scope="col">{h(c)}</th>' for c in columns)
        cells = "".join(
            "<tr>" + "".join(f"<td>{h(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
        )
        body += (
            f'<div class="scroll"><table id="logs"><caption>{len(rows)} rows</caption>'
            f"<thead><tr>{heads}</tr></thead><tbody>{cells}</tbody></table></div>"
        )
    return layout("Logs", body, csrf, "logs")


def add_edge(
    publishes: list[dict[str, Any]], csrf: str, error: str | None, form: dict[str, str]
) -> str:
    options = [
        (p["pipeline_url"], f"#{p['id']} {p['pipeline_name']}:{p['pipeline_version']}")
        for p in publishes
    ]
    if not options:
        return layout(
            "Add an edge",
            "<p>No publish is registered yet: run <code>edge publish --opscenter</code> first.</p>",
            csrf,
            "add",
        )
    body = (
        alert(error)
        + '<form method="post" action="/ui/edges/new" class="card">'
        + csrf_field(csrf)
        + _input(
            "name",
            "Edge name",
            form.get("name", ""),
            extra='required maxlength="63" pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,62}"',
        )
        + _select("pipeline_url", "Publish", options, form.get("pipeline_url", ""))
        + _input("tags", "Tags (comma-separated)", form.get("tags", ""))
        + '<button type="submit">Add the edge</button></form>'
    )
    return layout("Add an edge", body, csrf, "add")


def added(name: str, bundle: str, snippets: dict[str, str], csrf: str) -> str:
    blocks = "".join(
        f'<section class="snippet"><h2 id="s-{i}">{h(title)}</h2>'
        f'<pre id="snippet-{i}" tabindex="0" aria-labelledby="s-{i}"><code>{h(text)}</code></pre>'
        f'<button type="button" data-copy="snippet-{i}">Copy {h(title)}</button></section>'
        for i, (title, text) in enumerate(snippets.items())
    )
    body = (
        alert(f"Edge {name} added. This page shows its EDGE_BUNDLE once: copy it now.", "ok")
        + '<section class="snippet"><h2 id="s-bundle">EDGE_BUNDLE</h2>'
        f'<pre id="bundle" tabindex="0" aria-labelledby="s-bundle"><code>{h(bundle)}</code></pre>'
        '<button type="button" data-copy="bundle">Copy the bundle</button></section>'
        + blocks
        + '<p><a href="/ui/">Back to the fleet</a></p>'
    )
    return layout(f"Edge {name} added", body, csrf, "add")


def remove_edge(name: str, csrf: str) -> str:
    body = (
        f"<p>Remove edge <strong>{h(name)}</strong>? Its credentials are revoked at once: the "
        "appliance keeps serving but can no longer sync. This cannot be undone (add it again "
        "for a new bundle).</p>"
        f'<form method="post" action="/ui/edges/{h(name)}/remove" class="card">'
        + csrf_field(csrf)
        + f'<button type="submit" class="danger">Remove {h(name)}</button> '
        '<a href="/ui/">Cancel</a></form>'
    )
    return layout(f"Remove edge {name}?", body, csrf, "fleet")


def error(status: int, message: str, csrf: str | None) -> str:
    return layout(
        f"Error {status}", alert(message) + '<p><a href="/ui/">Back to the fleet</a></p>', csrf
    )


def assays(items: list[dict[str, Any]], csrf: str, problem: str | None = None) -> str:
    if problem:
        return layout("Assays", alert(problem), csrf, "assays")
    rows = "".join(
        f'<tr><td><a href="/ui/assays/{h(a["name"])}">{h(a["name"])}</a></td>'
        f"<td>{h(a.get('pipeline'))}</td><td>{h(a.get('column'))}</td>"
        f"<td>{h(a.get('metric'))}</td><td>{h(a.get('threshold'))}</td>"
        f"<td>{'active' if a.get('active') else 'paused'}</td>"
        f"<td>{h(a.get('last_run') or '-')}</td></tr>"
        for a in items
    )
    heads = "".join(
        f'<th scope="col">{t}</th>'
        for t in ("Name", "Pipeline", "Column", "Metric", "Threshold", "State", "Last run")
    )
    body = (
        f'<div class="scroll"><table id="assays"><caption>{len(items)} assays</caption>'
        f"<thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></div>"
        if items
        else "<p>No assays yet: create one with <code>ops-sync assay create</code>.</p>"
    )
    return layout("Assays", body, csrf, "assays")


def assay(
    a: dict[str, Any], results: list[dict[str, Any]], csrf: str, form: dict[str, str],
    notice: str | None = None, problem: str | None = None,
) -> str:  # fmt: skip
    name = a["name"]
    facts = _facts(
        [
            ("Pipeline", a.get("pipeline")),
            ("Column", a.get("column")),
            ("Edge", a.get("partition") or "all edges"),
            ("Metric", a.get("metric")),
            ("Threshold", a.get("threshold")),
            ("State", "active" if a.get("active") else "paused"),
            ("Last run", a.get("last_run") or "-"),
            ("Next run", a.get("next_run") or "-"),
        ]
    )
    run = (
        f'<form method="post" action="/ui/assays/{h(name)}/run" class="filters">'
        + csrf_field(csrf)
        + _input(
            "start", "From (UTC)", form.get("start", ""), "datetime-local", 'step="1" required'
        )
        + _input("end", "To (UTC)", form.get("end", ""), "datetime-local", 'step="1" required')
        + '<button type="submit">Run the assay</button></form>'
    )
    url = f"/ui/api/assays/{name}/results?limit=500"
    charts = (
        '<div class="charts">'
        '<figure class="chart"><figcaption id="c-scores">Score per window (dashed: threshold)'
        f'</figcaption><div class="plot" id="assay-scores" role="img" aria-labelledby="c-scores" '
        f'data-url="{h(url)}" data-threshold="{h(a.get("threshold"))}" data-points="0"></div>'
        '</figure><figure class="chart"><figcaption id="c-bins">Bins of the latest window '
        'against the baseline</figcaption><div class="plot" id="assay-bins" role="img" '
        'aria-labelledby="c-bins" data-points="0"></div></figure></div>'
    )
    rows = "".join(
        f"<tr><td>{h(r.get('window_start'))}</td><td>{h(r.get('window_end'))}</td>"
        f"<td>{h(_score(r.get('score')))}</td><td>{'yes' if r.get('alert') else 'no'}</td>"
        f"<td>{'yes' if r.get('warning') else 'no'}</td><td>{h(r.get('status'))}</td></tr>"
        for r in results[:50]
    )
    heads = "".join(
        f'<th scope="col">{t}</th>'
        for t in ("Window start", "Window end", "Score", "Alert", "Warning", "Status")
    )
    table = (
        f'<div class="scroll"><table id="assay-results"><caption>Newest results</caption>'
        f"<thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></div>"
        if results
        else "<p>No results yet: run it over a time range.</p>"
    )
    body = alert(notice, "ok") + facts + "<h2>Run over a time range</h2>" + alert(problem) + run
    body += f"<h2>Results</h2>{charts if results else ''}{table}"
    return layout(f"Assay {name}", body, csrf, "assays")


def _score(score: Any) -> str:
    return f"{score:.6f}" if isinstance(score, int | float) else "-"
