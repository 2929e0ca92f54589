"""RS-ResNet-50 on a Cloud TPU pod slice (e.g. v4-32), data and checkpoints in a bucket.

Install the project with its cloud extra on every host (`pip install -e '.[cloud]'`), then run the
same command on every host of the slice (e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all
--command=...`; docs/cloud_tpu.md has every step):

    python -m rsnets_jax.main --config=configs/tpu_pod.py --workdir=gs://BUCKET/runs/rs_resnet50 \
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

jax.distributed discovers the slice; every host reads its own part of the data; BatchNorm
statistics are over the global batch; bfloat16 compute with float32 parameters. The learning rate
follows the linear scaling rule from the paper's 0.1 at batch 256, with a 5-epoch warm-up for the
larger batch. A preemption notice (SIGTERM on any host) saves a checkpoint on every host at the
same step; the same command resumes. tests/test_cloud.py runs this file (on a tiny network) with
gs:// paths against a local Cloud Storage emulator, on two processes.
"""
from rsnets_jax import defaults


def get_config():
  c = defaults.get_config()
  c.model.arch = 'resnet50'
  c.model.dtype = 'bfloat16'
  c.data.batch_size = 2048
  c.data.eval_batch_size = 2048
  c.data.num_workers = 16
  c.optim.learning_rate = 0.1 * c.data.batch_size / 256
  c.optim.warmup_epochs = 5.0
  c.distributed = True
  c.checkpoint_every_steps = 500
  return c
