"""The web dashboard: see and steer a running session, study past batches, feed Prometheus.

- `live`: start/stop inside `trader` (a thread of the main process), or alone (`trader dashboard`).
- `state`: the once-a-second snapshot the live page shows (shared counters, account, database rows).
- `render` + `static/`: server-rendered HTML, a small script, plotly.js from the plotly package.
- `app`: the FastAPI routes; `auth`: the token on every request; `metrics`: `/metrics`.
"""
