"""The Grafana dashboard and the Prometheus alert rules, built in Python.

    python -m loraplane.dashboards --out charts/loraplane/files    dashboard.json, alerts.yaml
    python -m loraplane.dashboards --check charts/loraplane/files  exit 1 with a diff if stale
    python -m loraplane.dashboards.render --results R.json --out docs/dashboard.png

The panels are data (`dashboard.ROWS`): the Grafana JSON, the query checks and the PNG renderer
all read them, so a panel cannot be drawn, tested or shipped with different queries.
"""
