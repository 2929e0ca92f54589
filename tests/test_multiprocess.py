"""Two processes (jax.distributed on localhost, CPU devices) train exactly like one process."""
import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), 'distributed_worker.py')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run(num_processes, out):
  port = str(free_port())
  env = {**os.environ, 'PYTHONPATH': ROOT}
  procs = [subprocess.Popen([sys.executable, WORKER, port, str(num_processes), str(i), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(num_processes)]
  logs = [p.communicate(timeout=400)[0].decode() for p in procs]
  for p, text in zip(procs, logs):
    assert p.returncode == 0, text[-3000:]
  return dict(np.load(out))


def test_two_processes_match_one(tmp_path):
  two = run(2, tmp_path / 'two.npz')
  one = run(1, tmp_path / 'one.npz')
  assert set(two) == set(one) and len(one) > 10
  np.testing.assert_allclose(two['loss'], one['loss'], rtol=1e-4)
  for k in one:
    np.testing.assert_allclose(two[k], one[k], rtol=1e-3, atol=1e-4, err_msg=k)
