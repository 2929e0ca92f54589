"""Data: the kinds of data set, the input pipeline and the preprocessing.

`sources` holds the registry of data sets by kind (`DataSet`: what each says about itself) and
the module of each kind (`synthetic`, `folder`, `tfds`) registers it below; `transforms` the host
image operations (crops, evaluation views); `pipeline` the Grain pipelines the loop reads;
`preprocess` what the train step does on device (views, flips, scaling). This room imports
nothing of the project but `rsnets_jax.errors` and `rsnets_jax.storage`.
"""
from rsnets_jax.data import folder, synthetic, tfds
from rsnets_jax.data.transforms import CROP_FRACTION, DECODE_ERRORS, eval_view, open_image
from rsnets_jax.data.pipeline import (RECALIBRATION_VIEWS, check_config, eval_batches,
                                      recalibration_batches, train_iterator)
from rsnets_jax.data.sources import (DATA_SETS, PUBLISHED_CHECKPOINTS_DATA, SUBSET_SEED, DataSet,
                                     DecodedSource, check_num_classes, class_names, describe,
                                     kind, make_source, num_classes, num_eval_examples,
                                     num_train_examples, register, report_name, seeded_subset,
                                     with_data_dir)

# One line per kind of data set: config.data.dataset names it.
register(synthetic.SYNTHETIC)
register(folder.CLASS_FOLDERS)
register(tfds.TFDS)
