# The scripts here run under mpiexec, launched by tests/test_distributed.py;
# collecting them (for doctests) would run MPI code inside pytest itself.
collect_ignore_glob = ["*.py"]
