"""benchmarks/cfi_lf_optimum.py: the per-image minimiser of L_f, scored beside the maximum (as a user runs it)."""
import subprocess
import sys


def _rows(output: str) -> dict[str, list[float]]:
  """{fusion name: [Qabf, VIF, SSIM, SF, AG]} from the script's table."""
  rows = {}
  for line in output.splitlines():
    fields = line.rsplit(maxsplit=5)
    if len(fields) == 6:
      try:
        rows[fields[0].strip()] = [float(x) for x in fields[1:]]
      except ValueError:
        continue
  return rows


def test_the_release_gradient_terms_minimiser_loses_vif_and_ssim_and_of_max_keeps_the_maximum(repo_root):
  result = subprocess.run(
      [sys.executable, str(repo_root / 'benchmarks' / 'cfi_lf_optimum.py'), '--config=demo,smoke', '--lambdas=1',
       '--steps=300'], cwd=repo_root, capture_output=True, text=True, timeout=300, check=True)
  rows = _rows(result.stdout)
  maximum, of_max = rows['maximum'], rows['L_f minimiser, of_max, lambda 1']
  release = rows['L_f minimiser, release, lambda 1']
  assert all(abs(a - b) <= 0.01 * max(1.0, abs(b)) for a, b in zip(of_max, maximum)), (of_max, maximum)
  vif, ssim = 1, 2
  assert release[vif] < maximum[vif] - 0.1 and release[ssim] < maximum[ssim] - 0.02, (release, maximum)
