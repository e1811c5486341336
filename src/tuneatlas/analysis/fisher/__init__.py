"""S2's empirical-Fisher spectra, one idea per module (each imported by name, no re-exports):

* ``grams``: per-layer Gram matrices of per-example gradients from one forward and one
  backward pass (``layer_grams``), the per-module forms and their costs;
* ``reference``: the same Grams the obvious way (N backward passes), for tests and benchmarks;
* ``spectrum``: eigenvalues, effective ranks and their comparison;
* ``trials``: one `fisher` job (a base model with a fresh head, before fine-tuning);
* ``trace``: the training hook that measures the spectra during fine-tuning (S2.F4).
"""
