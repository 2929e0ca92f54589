"""experiments/benchmark.py: the step benchmark runs on a tiny network and its trace breakdown
accounts for the traced operations."""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import benchmark  # pylint: disable=wrong-import-position


def test_benchmark_prints_the_anchors_fields_and_the_trace_breakdown(tmp_path, capsys):
  benchmark.main(['--res', '24', '16', '--batch', '8', '--iters', '1', '--classes', '4',
                  '--width', '0.125', '--devices', '1', '--trace', str(tmp_path / 'trace')])
  out, err = capsys.readouterr()
  result = json.loads(out.strip().splitlines()[-1])
  assert result['res'] == [24, 16] and result['batch'] == 8
  assert result['step_ms'] > 0 and set(result['eval_img_s_per_res']) == {'24', '16'}
  lines = err.strip().splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith('operation time per step'))
  total = float(re.search(r'([\d.]+) ms in all', lines[header]).group(1))
  rows = [re.match(r'\s*([\d.]+) ms\s+([\d.]+)%\s+(\S.*\((forward|backward)\))$', line)
          for line in lines[header + 1:]]
  assert rows and all(rows), lines[header:]
  shares = [float(row.group(2)) for row in rows]
  assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.5
  assert any('backward' in row.group(3) for row in rows)
  assert total > 0
