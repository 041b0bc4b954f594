"""The one-call GPU acceptance: its dry run lists every step within the time budget, and a run reports each step
(passed, failed, out of time) with the device named on every section, going on after a failure."""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks import gpu


def test_the_dry_run_lists_every_step_within_eight_minutes():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "gpu", "--dry-run"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    budgets = {m[0]: int(m[1]) for m in re.findall(r"^(\S+)\s+(\d+) s ", done.stdout, re.MULTILINE)}
    assert set(budgets) == {s.name for s in gpu.STEPS} | {"total"}
    assert budgets["total"] == sum(s.budget_s for s in gpu.STEPS) <= 480
    assert "-m pytest" in done.stdout and "tests/test_gpu.py" in done.stdout and "benchmarks memory" in done.stdout


def test_a_run_reports_every_step_and_goes_on_after_a_failure(tmp_path, monkeypatch):
    steps = (gpu.Step("fine", 20, (sys.executable, "-c", "print('figure 1.0 s/step')"), "a step that passes"),
             gpu.Step("broken", 20, (sys.executable, "-c", "raise SystemExit(3)"), "a step that fails"),
             gpu.Step("slow", 1, (sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"),
                      "a step out of time"),
             gpu.Step("after", 20, (sys.executable, "-c", "print('still ran')"), "the step after"))
    monkeypatch.setattr(gpu, "STEPS", steps)
    monkeypatch.setattr(gpu, "_device_name", lambda: "Test GPU")
    gpu.main(str(tmp_path / "out"))
    report = (tmp_path / "out" / "gpu_report.md").read_text()
    sections = report.split("\n## ")[1:]
    assert [s.split(":")[0] for s in sections] == ["fine on Test GPU", "broken on Test GPU", "slow on Test GPU",
                                                   "after on Test GPU"]
    assert "passed" in sections[0] and "figure 1.0 s/step" in sections[0]
    assert "FAILED (exit 3)" in sections[1] and "OUT OF TIME (budget 1 s)" in sections[2]
    assert "started" in sections[2] and "still ran" in sections[3]
