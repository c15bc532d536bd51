"""The axes of the SAM method space.

Each module holds one axis: `masks` (which variables are perturbed),
`friendly` (the direction source), `geometry` (direction -> perturbation;
`matrices` and `nuclear` for the rank-1 geometries of nuSAM) and `schedule`
(when an ascent is taken and what replaces it). `tensors` holds the global
reductions they share. All functions are written once with `keras.ops` and
work on lists of float32 tensors.
"""
