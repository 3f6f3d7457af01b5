"""Training and evaluation of A-FINE with accelerate.

* :mod:`training.train_afine` - the paper's three training stages (``accelerate launch -m training.train_afine``).
* :mod:`training.losses` - the Thurstone probability and the fidelity loss.
* :mod:`training.schedule` - the cosine-annealing-with-restarts learning-rate schedule.
* :mod:`training.calibration` - fits of the 4-parameter logistic calibration constants to MOS.
* :mod:`training.evaluate` - benchmark evaluation (2AFC accuracy, SRCC/PLCC/KRCC) with a resumable cache.
* :mod:`training.cli` - the ``afine train`` command.
* :mod:`training.train_enhancer` - training of the diffusion enhancer (see ``docs/enhancer.md``).

Every A-FINE score is **lower = better**; labels and MOS are higher = better (see ``dataset_scripts.schema``).
Importing this package is cheap; heavy modules are imported on use.
"""
