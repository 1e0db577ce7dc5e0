"""Hypothesis profiles: `ci` (the default) draws the same examples every run, so a rare draw of the synthetic noise
(a 4 ms stall on half of one size's samples, p ~ 1e-4) cannot fail one CI run and pass the next; `explore`
(`HYPOTHESIS_PROFILE=explore`) draws fresh examples each run, to look for such corners on purpose."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
