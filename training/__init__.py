"""Training and evaluation of A-FINE on ``transformers.Trainer`` / accelerate.

* :mod:`training.train_afine` - the paper's three training stages (``accelerate launch -m training.train_afine``).
* :mod:`training.arguments` - ``HfArgumentParser`` command line (``TrainingArguments`` + stage arguments) and configs.
* :mod:`training.trainer` - ``AfineStageTrainer``: the official optimizer, schedule, sampler, loss and validation
  as ``Trainer`` hooks.
* :mod:`training.stages` - what each stage trains and its loss.
* :mod:`training.data` - training triplets, augmentation and the resumable sampler.
* :mod:`training.export` - Hub-ready model folders (code + ``auto_map``) and model cards.
* :mod:`training.losses` - the Thurstone probability and the fidelity loss.
* :mod:`training.schedule` - the cosine-annealing-with-restarts learning-rate schedule.
* :mod:`training.calibration` - fits of the 4-parameter logistic calibration constants to MOS.
* :mod:`training.evaluate` - benchmark evaluation (2AFC accuracy, SRCC/PLCC/KRCC) with a resumable cache.
* :mod:`training.cli` - the ``afine train`` command.
* :mod:`training.train_enhancer` - training of the diffusion enhancer (see ``docs/enhancer.md``).

Every A-FINE score is **lower = better**; labels and MOS are higher = better (see ``dataset_scripts.schema``).
Importing this package is cheap; heavy modules are imported on use.
"""
