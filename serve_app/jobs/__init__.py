"""Dataset jobs on the service: a file in over HTTP, the model work done in the background, results kept in a store.

params.py checks what a job asks (the same rules as the matching route), dataset.py reads the
uploaded file into records, store.py keeps each job's files and state (a local directory or an
object store), runner.py does one job chunk by chunk (resumable), evaluation.py makes an
evaluate job's report. The JobRunner deployment runs the jobs; the Ingress's jobs routes
(ingress/jobs_routes.py) create, show and delete them.
"""
