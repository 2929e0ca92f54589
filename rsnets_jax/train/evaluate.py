"""Evaluation: exact top-1/top-5 per resolution and for the trained resolutions' ensemble; every
validation image counts once (the pipeline pads and masks the last batch)."""
from typing import Any, Dict, Iterable, Optional

import jax

from rsnets_jax import data
from rsnets_jax.models import RSNet
from rsnets_jax.train import sharding
from rsnets_jax.train.step import make_eval_step


def evaluate(eval_step, params, stats, batches: Iterable[Dict[str, Any]], shard) -> Dict[str, float]:
  """Accuracies (%) from `eval_step` sums over `batches`; `shard` puts a host batch on the mesh."""
  totals: Dict[str, int] = {}
  for batch in batches:
    sums = jax.device_get(eval_step(params, stats, shard(batch)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0) + int(v)
  count = totals.pop('count', 0)
  if not count:
    raise ValueError('the evaluation set is empty')
  results = {k: 100.0 * v / count for k, v in totals.items()}
  results['count'] = count
  return results


def run_eval(config, net: RSNet, params, stats, mesh, batches: Optional[Iterable] = None
             ) -> Dict[str, float]:
  """Accuracies at every resolution of `net`, trained and added, over `batches` (default: the
  config's validation set; a batch's other resolutions go unused). `skipped`: unreadable images."""
  batches = data.eval_batches(config, net.all_resolutions) if batches is None else batches
  eval_step = make_eval_step(net, config.data, mesh)

  def shard(batch):
    batch = {**batch, 'images': {r: batch['images'][r] for r in net.all_resolutions}}
    return sharding.shard_batch(batch, mesh)

  accuracies = evaluate(eval_step, params, stats, batches, shard)
  accuracies['skipped'] = getattr(batches, 'skipped', 0)
  return accuracies
