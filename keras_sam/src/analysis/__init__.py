"""Flatness measures (private): sharpness, curvature and loss landscapes.

The public names are in `keras_sam/analysis.py`. One module per concept:
`objective` (the loss of a model as a function of its weights, and the
data), `autodiff/` (each backend's gradient and Hessian-vector product),
`vectors` (arithmetic on lists of tensors), `curvature`, `sharpness`,
`landscape`, `plots` (matplotlib, imported when a plot is drawn) and
`callback`.
"""
