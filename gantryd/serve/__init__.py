"""`gantryd serve`: the HTTP face of the fleet (docs/serve.md).

app.py is the plumbing (routing, threads, auth, limits); each module beside it registers
its routes: api.py (status, wait_for, update and rollback), hooks.py (registry and signed
webhooks; with registry.py: envelopes and matching, deliveries.py: ids seen before),
page.py (the web page at `/`), metrics.py (`/metrics`). server.py listens.
"""
