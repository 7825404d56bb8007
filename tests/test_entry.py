"""``python -m xclass`` runs the same command line as the ``xclass`` script."""
import subprocess
import sys


def test_python_dash_m_xclass_is_the_cli():
    ok = subprocess.run([sys.executable, "-m", "xclass", "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: xclass") and "export-index" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "xclass", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'no-such-command'" in bad.stderr
