"""The READMEs' commands work verbatim: every shell block marked ``<!-- runnable -->`` in README.md and
cluster/README.md runs as written, in order, in a copy of this checkout, on a fresh home directory (no Ray token
yet), with ``QUICK`` set to the tiny step count README.md names. The Ray head a block starts is found by its temp
directory (``RAY_TMPDIR``) and stopped afterwards; other clusters on the machine are left alone."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import stop_head

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "cluster" / "README.md")
RUNNABLE = re.compile(r"^<!-- runnable -->\n```bash\n(.*?)^```$", re.S | re.M)
QUICK = "--steps 2 --set model.checkpoint=null"  # what README.md says `$QUICK` is for a quick try


def runnable_blocks(path: Path) -> list[str]:
    return RUNNABLE.findall(path.read_text())


def _checkout_copy(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of this checkout (what a clone would have, plus work in
    progress), so that the blocks' `runs/` lands in the copy."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_every_readme_marks_its_runnable_blocks():
    """The markers the runner looks for are there (a README edit cannot silently drop them)."""
    main, cluster = (runnable_blocks(p) for p in READMES)
    assert len(main) >= 1 and "ray job submit" in main[0] and "$QUICK" in main[0] and "jobs/report.py" in main[0]
    assert len(cluster) >= 1 and "check_manifests.py" in cluster[0]
    assert f'QUICK="{QUICK}"' in (ROOT / "README.md").read_text()


def test_runnable_readme_blocks_work_verbatim(tmp_path):
    work = _checkout_copy(tmp_path / "checkout")
    if (ROOT.parent / "shared").is_dir():  # beside the checkout, as here (the KubeRay CRDs the manifest check reads)
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    ray_tmp = tempfile.mkdtemp(prefix="rrd", dir="/tmp")  # short: Ray's socket paths live under it
    home = tmp_path / "home"
    home.mkdir()
    real_cache = os.environ.get("RAL_DIST_CACHE", str(Path.home() / ".cache" / "ral_dist"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(home), "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "QUICK": QUICK,
            "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "RAL_DIST_CACHE": real_cache}
    try:
        for readme in READMES:
            for block in runnable_blocks(readme):
                proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env,
                                      capture_output=True, text=True, timeout=900)
                assert proc.returncode == 0, f"{readme.name} block failed:\n{block}\n{(proc.stdout + proc.stderr)[-5000:]}"
    finally:
        stop_head(str(Path(ray_tmp) / "ray"))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    run = work / "runs" / "my-run"
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and (run / "report.html").exists()  # 2 steps, resumed with nothing left to do
    assert (home / ".ray" / "auth_token").exists()  # the README made the token, the head and its clients used it
