"""Bitwise regression tests of your own task: record its bits once, check them on every commit.

    import repro.golden
    repro.golden.record(MyTask(), repro.Config(seed=0, batch_size=32), out="golden.json")
    report = repro.golden.check("golden.json")   # report.exit_code: 0, 1 or 3

bin/golden record / bin/golden check do the same from the command line, and
repro.testing.assert_golden(path) in a test suite. The implementation, and
what a golden file holds, is repro.proof.golden's.
"""

from repro.proof.golden import (DEFAULT_STEPS, EQUAL, EXIT_EQUAL, EXIT_OTHER_SCOPE,
                                EXIT_REGRESSION, FORMAT, OTHER_SCOPE, REGRESSION, Difference,
                                Recorded, Report, RunFailed, check, compare, format_report, load,
                                record)

__all__ = ["DEFAULT_STEPS", "EQUAL", "EXIT_EQUAL", "EXIT_OTHER_SCOPE", "EXIT_REGRESSION",
           "FORMAT", "OTHER_SCOPE", "REGRESSION", "Difference", "Recorded", "Report",
           "RunFailed", "check", "compare", "format_report", "load", "record"]
