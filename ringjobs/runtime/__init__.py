"""Container runtimes. Only runtime/docker.py imports the docker SDK."""
