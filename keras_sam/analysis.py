"""Flatness you can see: sharpness, Hessian spectrum and loss landscapes.

For any built Keras model (or a `SAMModel`, whose inner model is measured),
on the TensorFlow, JAX and PyTorch backends:

- `sharpness`: m-sharpness, worst case (projected gradient ascent) or
  average case (random directions), in the l2, linf and adaptive (ASAM)
  geometries (Mueller et al. 2023);
- `top_eigenvalues` (power iteration or Lanczos), `hessian_trace`
  (Hutchinson) and `hessian_vector_product`, for the whole model or some
  variables (a layer's), as PyHessian computes them (Yao et al. 2020);
- `interpolation`, `landscape_1d`, `landscape_2d` and `random_direction`:
  loss landscapes along filter-normalised directions (Li et al. 2018), and
  `plot_line`, `plot_contour`, `plot_heatmap` to draw them (matplotlib,
  imported only when a plot is drawn);
- `FlatnessCallback`: one of these measures in the logs during `fit`.

Every measure evaluates the model with `stateless_call(..., training=False)`:
nothing in the model changes, BatchNorm uses its moving statistics and
dropout is off.

Example:

```python
from keras_sam import analysis

print(analysis.top_eigenvalues(model, x, y).values[0])
print(analysis.sharpness(model, x, y, m=128).mean)
analysis.plot_line(analysis.interpolation(adamw_model, sam_model, x, y))
```
"""

from keras_sam.src.analysis.callback import FlatnessCallback
from keras_sam.src.analysis.curvature import (
    Eigen,
    Trace,
    hessian_trace,
    hessian_vector_product,
    top_eigenvalues,
)
from keras_sam.src.analysis.landscape import (
    Landscape1D,
    Landscape2D,
    interpolation,
    landscape_1d,
    landscape_2d,
    random_direction,
)
from keras_sam.src.analysis.plots import plot_contour, plot_heatmap, plot_line
from keras_sam.src.analysis.sharpness import Sharpness, sharpness

__all__ = [
    "Eigen",
    "FlatnessCallback",
    "Landscape1D",
    "Landscape2D",
    "Sharpness",
    "Trace",
    "hessian_trace",
    "hessian_vector_product",
    "interpolation",
    "landscape_1d",
    "landscape_2d",
    "plot_contour",
    "plot_heatmap",
    "plot_line",
    "random_direction",
    "sharpness",
    "top_eigenvalues",
]
