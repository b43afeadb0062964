"""The HTTP edge: the Ingress deployment (FastAPI routes, the UI), the request schemas, the HTTP answer of every
failure, API-key auth, the body limit, and the watch on whether a model replica runs.

Importing the package imports none of its modules: a client of the API (mt5-bulk) takes the
schemas without Ray's deployment machinery.
"""
