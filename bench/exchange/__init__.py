"""Moving records between stores and devices: bundles, uploads to a results server."""
