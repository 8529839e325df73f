"""`tunesmith serve`: a self-hosted, OpenAI-compatible fine-tuning service.

The web process (app.py + api/) only reads and writes the database and the files under the home
directory; worker processes (worker.py) claim queued jobs and run each as an ordinary tunesmith run in
a child process (jobs.py), which writes its events straight into the database.
"""
