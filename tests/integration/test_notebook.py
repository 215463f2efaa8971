"""experiments/quickstart.ipynb runs end to end in a real Jupyter kernel (nbclient), so the
notebook cannot rot: every cell executes, and its plots and samples come out."""

import os
import pathlib

import nbclient
import nbformat

REPO = next(p for p in pathlib.Path(__file__).resolve().parents if (p / 'setup.py').is_file())
NOTEBOOK = REPO / 'experiments' / 'quickstart.ipynb'


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  monkeypatch.setenv('LM_QUICKSTART_STEPS', '30')  # the notebook's own default is 300
  monkeypatch.setenv('LM_QUICKSTART_WORKDIR', str(tmp_path / 'run'))
  monkeypatch.setenv('LM_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.delenv('XLA_FLAGS', raising=False)  # the kernel: one CPU device, like a laptop
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO)}}).execute()
  outputs = [o for cell in nb.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # the loss curve and the attention maps
  text = ''.join(o.get('text', '') + o.get('data', {}).get('text/plain', '') for o in outputs)
  assert 'eval/loss' in text and 'bits_per_byte' in text  # evaluate() ran
  assert (tmp_path / 'run' / 'metrics.jsonl').is_file()
