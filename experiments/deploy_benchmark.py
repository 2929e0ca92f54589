"""Deployment evidence on this machine, in one run: export and profile a trained RS-Net and a
converted full-size RS-ResNet-18 with random weights, next to `jax.jit(net.apply)` and the
PyTorch anchor's eager inference, and check the issue's targets.

    PYTHONPATH=. python experiments/deploy_benchmark.py --data-dir=DIR --anchor=FILE
        [--workdir=runs/synthetic_demo ...] [--eval-images=1000]

External inputs, as arguments: `--data-dir`, photos as class folders (DIR/train/<class>/,
DIR/val/<class>/; Imagenette from https://github.com/fastai/imagenette; on this project's machines
../shared/datasets/imagenette-128), and `--anchor`, the PyTorch anchor's file
(torch_rs_resnet18.py, not in this repository; there ../shared/bench/torch_rs_resnet18.py).

For each `--workdir` (default: the synthetic demo run, trained first with its README command when
absent) and for a full-size RS-ResNet-18 made by the PyTorch reference layout of
tests/torch_reference.py (random weights, converted with `rsnets_jax.convert` at 224/192/160/128/96,
plus `--extra` resolutions given their nearest BatchNorm with `reuse_batchnorm`):
`rsnets_jax.export` writes the JAX artifacts, ONNX models and int8 ONNX models (calibrated on
each run's own training images; the full-size network's on the photos of `--data-dir`, whose
classes are not its own, so there only the agreement with float32 is measured),
`rsnets_jax.profile` measures them,
the same `profile.measure` times `jax.jit(net.apply)` (uint8 in, the same scaling) in `--rounds`
rounds alternating with the JAX artifact (the lower p50 of each decides the artifact's target; the
table's own columns are the profile's single pass and the rounds' best), and the anchor
(`--anchor`, run with `--batch 1`: its eval mode, one resolution's branch under
torch.no_grad) gives PyTorch's eager batch-1 time per image (a mean, over `--torch-iters` calls).
For the full-size network it also measures what reading the folded weights once costs (all of
them, and the last stage's) and profiles onnxruntime's convolutions per stage at 224 px and at
the smallest paper resolution.
Writes <out>/report.md and report.json; the exports and their latency.md stay in <out>.

Targets (issue 10): latency falls with resolution in proportion to MACs within 30% (p50 relative
to the largest resolution over MACs relative to it, at 224..96); the JAX artifact is no slower
than jax.jit(net.apply) (p50); the faster runtime at batch 1 is within 1.5x of PyTorch eager.
"""
import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np

import rsnets_jax
from rsnets_jax import checkpoints, convert as convert_command
from rsnets_jax.data import preprocess
from rsnets_jax.deploy import export, fold, formats, manifest as manifests, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join('runs', 'synthetic_demo')
PAPER = (224, 192, 160, 128, 96)
PROPORTION = 0.30
TORCH_FACTOR = 1.5


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--workdir', action='append', default=None,
                  help=f'a trained run to export (repeatable; default {DEMO})')
  ap.add_argument('--out', default=os.path.join('runs', 'deploy_benchmark'))
  ap.add_argument('--extra', type=int, nargs='*', default=[64],
                  help='resolutions added to the full-size network (reused BatchNorm)')
  ap.add_argument('--batch', type=int, default=16, help='throughput batch')
  ap.add_argument('--iters', type=int, default=50, help='timed batch-1 calls per measurement')
  ap.add_argument('--torch-iters', type=int, default=30)
  ap.add_argument('--rounds', type=int, default=3,
                  help='rounds of jit(net.apply) alternating with the JAX artifact')
  ap.add_argument('--data-dir', required=True,
                  help="class folders of photos that calibrate the full-size network's int8 "
                       "models (e.g. Imagenette)")
  ap.add_argument('--anchor', required=True,
                  help="the PyTorch anchor's file, torch_rs_resnet18.py")
  ap.add_argument('--eval-images', type=int, default=1000,
                  help="validation photos the full-size network's int8 models are compared on "
                       "(each --workdir's int8 models: its whole validation set)")
  return ap.parse_args(argv)


def load_torch_reference():
  spec = importlib.util.spec_from_file_location(
      'torch_reference', os.path.join(ROOT, 'tests', 'torch_reference.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def full_size_network(out: str, extra) -> str:
  """A converted RS-ResNet-18 with random weights (and `extra` resolutions); its directory."""
  import torch  # pylint: disable=import-outside-toplevel
  ref = load_torch_reference()
  torch.manual_seed(0)
  model = ref.randomize(ref.create('resnet18', 1000, len(PAPER)), PAPER)
  src, converted = os.path.join(out, 'r18_random.pth.tar'), os.path.join(out, 'r18_converted')
  ref.save_reference_checkpoint(model, src, 'parallel_resnet18')
  if convert_command.main(['--arch', 'resnet18', '--src', src, '--dst', converted, '--overwrite']) != 0:
    raise SystemExit('conversion failed')
  if not extra:
    return converted
  net, params, stats = rsnets_jax.load(converted)
  for res in extra:
    net, params, stats = rsnets_jax.reuse_batchnorm(net, params, stats, res)
  extended = os.path.join(out, 'r18_converted_extended')
  # The converter's provenance: where the weights came from, and so that the classes are ImageNet's.
  meta = checkpoints.read_meta(converted)
  rsnets_jax.save_model(extended, net, params, stats,
                        {k: meta[k] for k in ('converted_from', 'source_checkpoint')})
  return extended


def time_net_apply(workdir: str, dst: str, manifest, args):
  """profile.measure of jax.jit(net.apply) at each exported resolution, on the same uint8 input,
  in `args.rounds` rounds alternating with the JAX artifact: {res: figures}, each with the lowest
  p50 of its rounds and, under 'artifact_p50_ms', the artifact's (the two then share any drift
  of the machine's speed, which separate runs minutes apart do not)."""
  net, params, stats = rsnets_jax.load(workdir)
  pre = manifest['preprocessing']
  mean, std = pre['mean'], pre['std']
  apply = jax.jit(lambda p, s, x: net.apply(p, s, preprocess.to_float(x, mean, std)))
  figures = {}
  for r in manifest['resolutions']:
    res = r['resolution']
    artifact = manifests.load_runtime(dst, manifest, res, 'jax')

    def jitted(x, s=stats[res]):
      return np.asarray(apply(params, s, x))
    rounds = [(profile.measure(jitted, res, args.batch, args.iters),
               profile.measure(artifact, res, args.batch, args.iters)['p50_ms'])
              for _ in range(args.rounds)]
    figures[res] = min((f for f, _ in rounds), key=lambda f: f['p50_ms'])
    figures[res]['artifact_p50_ms'] = min(p50 for _, p50 in rounds)
  return figures


def _read_once(kernels, iters: int) -> float:
  """Median seconds of one pass over `kernels` (2-D arrays), each multiplying a row vector: every
  weight is read once and almost nothing is computed; the kernels are arguments, not constants
  that XLA could fold."""
  rows = jax.device_put([np.ones((1, k.shape[0]), np.float32) for k in kernels])
  kernels = jax.device_put(kernels)
  read = jax.jit(lambda rows, kernels: [r @ k for r, k in zip(rows, kernels)])
  for _ in range(20):
    jax.block_until_ready(read(rows, kernels))
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(read(rows, kernels))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def weight_reading_floor(workdir: str, res: int, iters: int = 200):
  """What reading the folded weights of `res` once costs here, the least a batch-1 call costs,
  for all of them and for the last stage's alone (ResNet's `layer4_*`, which at batch 1 and a
  small input computes little per weight): {'all' | 'last_stage': {'bytes', 'p50_ms', 'gb_s'}}."""
  net, params, stats = rsnets_jax.load(workdir)
  folded = fold.fold(net, params, stats[res], res)
  last = max(name.split('_')[0] for name in folded if name.startswith('layer'))
  groups = {'all': folded, 'last_stage': {k: v for k, v in folded.items() if k.startswith(last)}}
  floors = {}
  for group, tree in groups.items():
    kernels = [np.asarray(k).reshape(-1, k.shape[-1]) for k in jax.tree.leaves(tree)
               if np.ndim(k) >= 2]
    size, seconds = sum(k.nbytes for k in kernels), _read_once(kernels, iters)
    floors[group] = {'bytes': size, 'p50_ms': 1e3 * seconds, 'gb_s': size / seconds / 1e9}
  return floors


def onnxruntime_conv_times(model_path: str, res: int, calls: int = 300):
  """{output channels: ms per call} of the ONNX model's convolutions at batch 1, from
  onnxruntime's own profiler (its node times, summed over the convolutions with that many output
  channels: in a ResNet, one stage each)."""
  import onnxruntime  # pylint: disable=import-outside-toplevel
  options = onnxruntime.SessionOptions()
  options.enable_profiling = True
  options.profile_file_prefix = os.path.join(os.path.dirname(model_path), 'ort_profile')
  session = formats.onnx_session(model_path, options)
  feed = {session.get_inputs()[0].name:
          np.random.default_rng(0).integers(0, 256, (1, res, res, 3), np.uint8)}
  for _ in range(calls):
    session.run(None, feed)
  trace = session.end_profiling()
  with open(trace) as f:
    events = json.load(f)
  os.remove(trace)
  runs = sum(e.get('cat') == 'Session' and e['name'] == 'model_run' for e in events)
  times = {}
  for e in events:
    if e.get('cat') == 'Node' and e['args'].get('op_name') == 'Conv' and e['name'].endswith(
        '_kernel_time'):
      channels = e['args']['output_type_shape'][0]['float'][1]
      times[channels] = times.get(channels, 0.0) + e['dur'] / 1e3 / runs
  return dict(sorted(times.items()))


def why_batch_one_costs(workdir: str, dst: str, manifest, args):
  """Report lines and figures on what a batch-1 call of the full-size network costs beyond its
  MACs: the weight-reading floor, and onnxruntime's convolutions per stage at the largest and the
  smallest paper resolution."""
  smallest = min(r['resolution'] for r in manifest['resolutions'] if r['resolution'] in PAPER)
  floor = weight_reading_floor(workdir, smallest)
  cache = manifest['profile']['machine']['last_level_cache']
  lines = ['', f"Reading the folded weights once, the least a batch-1 call costs (last-level "
           f"cache {cache}): all {floor['all']['bytes'] / 1e6:.1f} MB "
           f"{floor['all']['p50_ms']:.2f} ms ({floor['all']['gb_s']:.0f} GB/s); the last "
           f"stage's {floor['last_stage']['bytes'] / 1e6:.1f} MB "
           f"{floor['last_stage']['p50_ms']:.2f} ms ({floor['last_stage']['gb_s']:.0f} GB/s)."]
  figures = {'weight_reading_floor': floor}
  if 'onnxruntime' not in manifest['profile']['runtimes']:
    return lines, figures
  rows = {r['resolution']: r for r in manifest['resolutions']}
  conv_ms = {}
  for res in (max(PAPER), smallest):
    conv_ms[res] = onnxruntime_conv_times(os.path.join(dst, rows[res]['files']['onnx']['file']),
                                          res)
    lines += ['', f"onnxruntime's convolutions at {res} px, batch 1, ms per call by output "
              f"channels (its profiler): " +
              ', '.join(f'{c}: {ms:.2f}' for c, ms in conv_ms[res].items()) + '.']
  figures.update(onnxruntime_conv_ms=conv_ms)
  return lines, figures


def torch_anchor(anchor: str, resolutions, iters: int):
  """{res: ms per image} of the anchor's eager eval at batch 1 (a mean over `iters` calls)."""
  cmd = [sys.executable, anchor, '--variant', 'fp32', '--batch', '1', '--iters', str(iters),
         '--res', *map(str, resolutions)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  return {int(res): 1e3 / img_s for res, img_s in result['eval_img_s_per_res'].items()}, result


def table(manifest, jit_figures, torch_ms):
  """Markdown rows and the target verdicts of one exported network."""
  rows = {r['resolution']: r for r in manifest['resolutions']}
  runtimes = manifest['profile']['runtimes']
  biggest = max(rows)
  lines = ['| resolution | MACs | MACs / largest | ' +
           ' | '.join(f'{rt} p50 / p90 (ms)' for rt in runtimes) +
           ' | jit(net.apply) p50 (ms) | ' + ('PyTorch eager (ms) | ' if torch_ms else '') +
           ' | '.join(f'{rt} img/s' for rt in runtimes + ['jit(net.apply)']) + ' |']
  lines.append('|' + ' --- |' * (lines[0].count('|') - 1))
  verdict = {'proportion': {}, 'proportion_at_batch': {}, 'artifact_vs_jit': {}, 'vs_torch': {}}
  for res, r in rows.items():
    lat = {rt: r['latency'][rt] for rt in runtimes}
    macs_ratio = r['macs'] / rows[biggest]['macs']
    cells = [str(res) + ('' if r['trained'] else ' (not trained)'), f"{r['macs'] / 1e6:.1f}M",
             f'{macs_ratio:.3f}']
    cells += [f"{lat[rt]['p50_ms']:.2f} / {lat[rt]['p90_ms']:.2f}" for rt in runtimes]
    cells.append(f"{jit_figures[res]['p50_ms']:.2f}")
    if torch_ms:
      cells.append(f'{torch_ms[res]:.2f}' if res in torch_ms else '-')
    cells += [f"{lat[rt]['throughput_img_s']:.1f}" for rt in runtimes]
    cells.append(f"{jit_figures[res]['throughput_img_s']:.1f}")
    lines.append('| ' + ' | '.join(cells) + ' |')
    for rt in runtimes:
      ratio = (lat[rt]['p50_ms'] / rows[biggest]['latency'][rt]['p50_ms']) / macs_ratio
      verdict['proportion'].setdefault(rt, {})[res] = round(ratio, 3)
      # The same at the throughput batch, where a call's fixed costs are shared by the batch.
      ratio = (rows[biggest]['latency'][rt]['throughput_img_s'] / lat[rt]['throughput_img_s'])
      verdict['proportion_at_batch'].setdefault(rt, {})[res] = round(ratio / macs_ratio, 3)
    verdict['artifact_vs_jit'][res] = round(jit_figures[res]['artifact_p50_ms'] /
                                            jit_figures[res]['p50_ms'], 3)
    if res in torch_ms:
      # Against PyTorch's float32 eager inference, the float32 runtimes only.
      fastest = min(lat[rt]['p50_ms'] for rt in runtimes if rt != 'onnxruntime_int8')
      verdict['vs_torch'][res] = round(fastest / torch_ms[res], 3)
  return lines, verdict


def int8_line(manifest):
  """What the int8 models keep of the float32 ones, per resolution, on the same images."""
  about = manifest['int8']
  cells = []
  for r in manifest['resolutions']:
    m = r['int8']
    cells.append(f"{r['resolution']} px " + (
        f"{m['top1']:.2f} ({m['float32_top1']:.2f})" if about['labelled'] else '') +
        f" {m['top1_agreement']:.1f}% {m['logits_relative_rms_error']:.3f}")
  return (f"int8 ({about['calibration_images']} {about['data']} training images calibrate each "
          f"resolution; {about['eval_images']} validation images): " +
          ('top-1 % int8 (float32), and ' if about['labelled'] else '') +
          'the share of images whose top-1 class is float32\'s, the logits\' relative RMS '
          'error: ' + ', '.join(cells) + '.')


SWITCHABLE_SIZE, SWITCHABLE_LATENCY = 1.1, 0.15  # issue 22's targets
SWITCHED = {'jax_switchable': 'jax', 'onnxruntime_switchable': 'onnxruntime'}


def switchable_lines(manifest):
  """The one-file formats against the per-resolution files: bytes, and per resolution the
  batch-1 p50 and the throughput at the batch, as ratios (switchable / per-resolution)."""
  rows = manifest['resolutions']
  lines = []
  for name, per_res in (('onnx_switchable', 'onnx'), ('jax_switchable', 'jax')):
    whole = rows[0]['files'][name]['bytes']
    one = max(r['files'][per_res]['bytes'] for r in rows)
    every = sum(r['files'][per_res]['bytes'] for r in rows)
    met = 'met' if whole <= SWITCHABLE_SIZE * one else 'NOT met'
    target = f' (target <= {SWITCHABLE_SIZE}x: {met})' if name == 'onnx_switchable' else ''
    lines.append(f"- {rows[0]['files'][name]['file']}: {whole / 1e6:.2f} MB, {whole / one:.3f}x "
                 f"the largest per-resolution {per_res} file ({one / 1e6:.2f} MB), "
                 f"{whole / every:.3f}x all {len(rows)} of them ({every / 1e6:.2f} MB){target}")
  for switched, runtime in SWITCHED.items():
    batch1 = {r['resolution']: round(r['latency'][switched]['p50_ms'] /
                                     r['latency'][runtime]['p50_ms'], 3) for r in rows}
    batched = {r['resolution']: round(r['latency'][runtime]['throughput_img_s'] /
                                      r['latency'][switched]['throughput_img_s'], 3) for r in rows}
    ok = all(v <= 1 + SWITCHABLE_LATENCY for v in list(batch1.values()) + list(batched.values()))
    lines.append(f"- {switched} / {runtime}, time per image: batch 1 (p50) {batch1}, at the "
                 f"throughput batch {batched}; within {SWITCHABLE_LATENCY:.0%} at every size: "
                 f"{'met' if ok else 'NOT met'}")
  return lines


def verdict_lines(verdict, paper_only: bool):
  lines = []
  for rt, ratios in verdict['proportion'].items():
    judged = {r: v for r, v in ratios.items() if r in PAPER or not paper_only}
    ok = all(abs(v - 1) <= PROPORTION for v in judged.values())
    lines.append(f"- latency proportional to MACs within {PROPORTION:.0%} ({rt}; latency ratio / "
                 f"MACs ratio per resolution {judged}): {'met' if ok else 'NOT met'}")
  for rt, ratios in verdict['proportion_at_batch'].items():
    judged = {r: v for r, v in ratios.items() if r in PAPER or not paper_only}
    lines.append(f"- (not a target) the same from throughput at the batch of the table ({rt}): "
                 f"{judged}")
  ratios = verdict['artifact_vs_jit']
  lines.append(f"- JAX artifact no slower than jax.jit(net.apply) (the lower p50 of rounds "
               f"alternating the two, ratio {ratios}): "
               f"{'met' if all(v <= 1 for v in ratios.values()) else 'NOT met'}")
  if verdict['vs_torch']:
    ratios = verdict['vs_torch']
    ok = all(v <= TORCH_FACTOR for v in ratios.values())
    lines.append(f"- faster float32 runtime within {TORCH_FACTOR}x of PyTorch eager at batch 1 "
                 f"(ratio {ratios}): {'met' if ok else 'NOT met'}")
  return lines


def main(argv=None):
  args = parse_args(argv)
  for flag, path in (('--data-dir', args.data_dir), ('--anchor', args.anchor)):
    if not os.path.exists(path):
      sys.exit(f'error: {flag} {path} does not exist')
  start, load_start = time.time(), os.getloadavg()[0]
  date = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  os.makedirs(args.out, exist_ok=True)
  workdirs = args.workdir or [DEMO]
  if workdirs == [DEMO] and not os.path.exists(DEMO):
    subprocess.run([sys.executable, '-m', 'rsnets_jax.main', '--config=configs/synthetic_demo.py',
                    f'--workdir={DEMO}'], check=True)
  networks = [(w, os.path.join(args.out, os.path.basename(os.path.normpath(w)) + '_export'))
              for w in workdirs]
  networks.append((full_size_network(args.out, args.extra), os.path.join(args.out, 'r18_export')))

  report = {'date': date, 'load_average_1min_start': load_start, 'networks': {}}
  sections = []
  for i, (workdir, dst) in enumerate(networks):
    full_size = i == len(networks) - 1
    export.export_model(workdir, dst, formats=tuple(formats.FORMATS), overwrite=True,
                        data_dir=args.data_dir if full_size else None,
                        eval_images=args.eval_images if full_size else 0)
    manifest = profile.profile_model(dst, batch=args.batch, iters=args.iters)
    jit_figures = time_net_apply(workdir, dst, manifest, args)
    torch_ms, anchor = ({}, None)
    if full_size:
      torch_ms, anchor = torch_anchor(args.anchor, [r['resolution']
                                                    for r in manifest['resolutions']],
                                      args.torch_iters)
    lines, verdict = table(manifest, jit_figures, torch_ms)
    lines += ['', int8_line(manifest), '', 'One file for every resolution (issue 22):',
              *switchable_lines(manifest)]
    diagnostics = {}
    if full_size:
      extra_lines, diagnostics = why_batch_one_costs(workdir, dst, manifest, args)
      lines += extra_lines
    title = (f"RS-{manifest['arch']} width {manifest['width']:g}, {manifest['num_classes']} "
             f"classes, from `{workdir}`")
    sections += [f'### {title}', '', *lines, '', *verdict_lines(verdict, full_size), '']
    report['networks'][workdir] = {'manifest': manifest, 'jit_net_apply': jit_figures,
                                   'torch_eager_ms': torch_ms, 'anchor': anchor,
                                   **diagnostics, 'verdict': verdict}
    report['machine'] = manifest['profile']['machine']
  report['wall_s'] = round(time.time() - start, 1)
  report['load_average_1min_end'] = os.getloadavg()[0]
  head = [f"Measured {date} on {report['machine']['description']}; 1-minute load average "
          f"{load_start:.2f} at the start, {report['load_average_1min_end']:.2f} at the end; "
          f"wall time {report['wall_s']:.0f} s.",
          f'Batch-1 p50 / p90 over at least {args.iters} calls and 1 s after warm-up; throughput '
          f'at batch {args.batch}; PyTorch: the anchor\'s eager eval, fp32, batch 1, a mean over '
          f'{args.torch_iters} calls.', '']
  text = '\n'.join(head + sections)
  with open(os.path.join(args.out, 'report.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(args.out, 'report.json'), 'w') as f:
    json.dump(report, f, indent=1, default=str)
  print(text)


if __name__ == '__main__':
  main()
