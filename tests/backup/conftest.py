# The script here runs in subprocesses (under mpiexec too), launched by
# tests/test_backup.py; collecting it (for doctests) would import it inside
# pytest itself.
collect_ignore_glob = ["*.py"]
