"""A trained RS-Net at its own training resolutions, with the BatchNorm running statistics it
learned and with statistics re-estimated the way an added resolution gets them
(`rsnets_jax.train.recalibrate.recalibrated_stats`, from training crops, in train mode), side by
side.

    PYTHONPATH=. python experiments/imagenette/recalibrated_bn.py --config=configs/imagenette.py \
        --config.data.dataset=folder --config.data.data_dir=DIR \
        --workdir=runs/imagenette/cpu_long/runs/ens_topdown/seed0 [--num_images=2048]

It separates two causes when an added (never trained) resolution lands below its trained
neighbours: the re-estimation itself (then the trained resolutions lose accuracy here too) or the
resolution being new to the weights. Prints one table: resolution, top-1 with the running
statistics, top-1 with re-estimated ones.
"""
import sys

from absl import app, flags

from rsnets_jax import checkpoints, cli, data
from rsnets_jax.data import preprocess
from rsnets_jax.train import evaluate, recalibrate, sharding
from rsnets_jax.main import FLAGS  # --config and --workdir, as the training command

def compare(config, workdir, num_images: int):
  net, params, stats = checkpoints.load(workdir, which=config.eval_checkpoint)
  mean, std = preprocess.input_normalisation(config.data)
  batches, used = data.recalibration_batches(config, net.resolutions, num_images, views='train')
  recalibrated = {res: recalibrate.recalibrated_stats(net, params, res, batches, used, mean, std)
                  for res in net.resolutions}
  mesh = sharding.make_mesh()
  results = {}
  for name, s in (('running', stats), ('recalibrated', recalibrated)):
    p, s = sharding.replicate((params, s), mesh)
    results[name] = evaluate.run_eval(config, net, p, s, mesh)
  lines = [f'{workdir}: top-1 (%) on {results["running"]["count"]} validation images, '
           f'statistics re-estimated from {used} training crops', '',
           '| resolution | running statistics | re-estimated statistics |', '| --- | --- | --- |']
  for res in net.resolutions:
    lines.append(f"| {res} | {results['running'][f'top1/{res}']:.2f} | "
                 f"{results['recalibrated'][f'top1/{res}']:.2f} |")
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = cli.config_flag(FLAGS)
  cli.setup_logging()
  sys.exit(cli.run_command(lambda: print(compare(config, FLAGS.workdir, FLAGS.num_images))))


if __name__ == '__main__':
  cli.restart_with_huge_pages()
  flags.DEFINE_integer('num_images', recalibrate.DEFAULT_NUM_IMAGES,
                       'Training images (whole batches) that re-estimate each resolution\'s '
                       'statistics.', lower_bound=1)
  app.run(main, flags_parser=cli.parse_absl_flags)
