"""Python warnings raised inside lucid become lucid's own one-line warnings.

numpy and nibabel warn on stderr ("RuntimeWarning: overflow encountered in
cast", "UserWarning: ...") with a source line attached; on a successful run
that is noise in the wrong form.  :class:`collect` records every warning
raised in its block (any thread) instead, and ``lines`` gives one line per
distinct message, named by the file it is about, for a report's warnings.
"""

from __future__ import annotations

import functools
import warnings


class collect:
    """``with collect() as seen: ...``; then ``seen.lines(name)`` (distinct messages, in order)."""

    def __enter__(self) -> "collect":
        self._context = warnings.catch_warnings(record=True)
        self.records = self._context.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> bool:
        self._context.__exit__(*exc)
        return False

    def messages(self) -> list[str]:
        seen: dict[str, None] = {}
        for record in self.records:
            seen.setdefault(" ".join(str(record.message).split()), None)
        return list(seen)

    def lines(self, name: str) -> list[str]:
        return [f"{name}: {text}" for text in self.messages()]


def into_report(func):
    """Decorate a function returning a report (``.input``, ``.warnings``): every Python warning
    raised during the call (numpy, nibabel, h5py, any thread) becomes one line of ``report.warnings``,
    named by the input; nothing reaches stderr.  On an exception they are dropped with the report."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with collect() as seen:
            report = func(*args, **kwargs)
        report.warnings.extend(line for line in seen.lines(report.input) if line not in report.warnings)
        return report

    return wrapper
