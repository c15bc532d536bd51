"""Layer machinery: the kernels of `Dense` and `EinsumDense` layers read as
weight matrices, and their layers' products under a rank-1 perturbation or
through a probe (the nuclear geometries' pass 2 and pass 1). The math they
run is in `methods/nuclear.py`."""
