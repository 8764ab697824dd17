"""A run as independent cells, one per (method, bits): computed here or on Ray, kept as they finish.

`options` is the config's `executor:` section; `cells` computes one cell's parts; `folder` keeps the
finished ones on disk for `--resume`; `local` and `ray_executor` schedule them.
"""
