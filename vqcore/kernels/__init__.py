"""Numba kernels.  They do not validate: the public functions in vqcore do."""
