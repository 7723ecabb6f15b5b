"""The README's promises that a file in the repository can contradict."""

import os
import re
import subprocess

from tests import helpers

README = os.path.join(helpers.REPO_ROOT, "README.md")
CI_RUN = os.path.join(helpers.REPO_ROOT, ".ci", "run")


def _ci_packages() -> set[str]:
  # The package variables of .ci/run, expanded by bash itself (the script's own definitions).
  script = ("source <(sed -n '/^ICON_FONTS=/,/^DATASETS=/p' " + CI_RUN + "); "
            "echo $ICON_FONTS $CJK_FONTS $ICON_THEMES $DATASETS")
  out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
  with open(CI_RUN) as f:
    extra = re.search(r"\$DATASETS ([^\n]*)", f.read()).group(1).split()
  return set(out.split()) | set(extra)


def test_readme_lists_the_debian_packages_ci_installs():
  with open(README) as f:
    text = f.read()
  block = re.search(r"apt-get install --no-install-recommends \\\n(.*?)```", text, re.S).group(1)
  listed = set(block.replace("\\", " ").split())
  ci = _ci_packages()
  assert listed == ci, (sorted(listed - ci), sorted(ci - listed))
