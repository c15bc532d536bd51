"""What the tests share, none of it a test itself:

- the NumPy references, written from the papers with nothing taken from
  `keras_sam`: `reference` (the SAM family on a small MLP) and
  `reference_attention` (a multi-head-attention classifier for nuSAM);
- shared helpers and tables: `helpers` (the references' Keras twins and
  comparisons), `golden` (the golden cases: every preset as `SAMModel`
  options and as the reference's `Config`), `saving` (the callables
  registered for the saving tests), `distributed` (what the distributed
  tests train), and `processes` (the harness that runs Python
  subprocesses, one or several ranks at once);
- the scripts that the tests run as subprocesses, `python
  tests/support/SCRIPT.py ...`: `cross_backend`, `distributed_jax`,
  `distributed_tf`, `multi_process_jax`, `multi_worker_tf`, `preemption`
  and `resume`.

Tests import it as `support` (pytest puts tests/ on `sys.path`). Each
script, run as `python tests/support/SCRIPT.py`, puts tests/ on its path
itself; `processes.environment` puts tests/ on the PYTHONPATH of every
subprocess, for the code that the tests run with `python -c`. No module
here imports a test module.
"""
