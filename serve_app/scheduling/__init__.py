"""Iteration-level scheduling of one engine: who runs at each decoding step (no Ray, no HTTP).

`config` and `errors` import no torch, so the light deployments can use them.
"""
