"""The ops center's dashboard at /ui/: server-rendered pages for browsers.

- `session`: sign-in with the admin token, server-side sessions in the metadata database
  (only a hash of the session id is stored), CSRF tokens, the form reader.
- `data`: what the pages show (the fleet's rows, an edge's series from logs and heartbeats).
- `pages`: the HTML (string templates, every value escaped); `snippets`: the add-edge page's
  `docker run`, compose and helm lines.
- `routes`: the routes, mounted by `ops_sync.server` as one `Mount("/ui")`.
- `static/`: `app.js` (live updates, sorting, filtering, charts), `app.css`, and the vendored
  uPlot (`static/vendor/uplot-1.6.32/`, see its README): nothing is fetched from a CDN.
"""

from ops_sync.ui.routes import mount

__all__ = ["mount"]
