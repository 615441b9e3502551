"""The results server: devices upload records with per-device tokens; anyone (or any token
holder, with private reads) reads records, devices, artifacts and the HTML report.

`app.create_app(settings)` builds the FastAPI app over a results store; `tokens` manages API
tokens without FastAPI, so `bench serve token ...` works on any install.
"""
