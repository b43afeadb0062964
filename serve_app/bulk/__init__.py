"""Bulk jobs (`mt5-bulk`): classify or augment a JSONL/CSV file, resumably, on Ray Data or a running service.

records.py reads inputs and formats outputs, task.py says what a job does to a chunk
of texts, progress.py keeps the resume state, job.py drives a run, ray_runner.py and
http_runner.py do the model work, cli.py is the command line.
"""
