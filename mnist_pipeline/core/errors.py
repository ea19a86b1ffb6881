"""The exceptions the command line reports in one line: UserError (exit status 2) and
Mismatch (exit status 1)."""


class UserError(Exception):
    """Bad input from the user: a parameter, a data file, a run id or a model URI."""


class RegistrationError(UserError):
    """Training finished and is kept, but registering its best run failed."""


class WorkerDied(UserError):
    """A training's worker process died without a word (killed hard, out of memory)."""


class Mismatch(Exception):
    """A check ran to the end and found a difference (`verify`): exit status 1."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, for a one-line report; '' if it has none."""
    return next(iter(str(err).strip().splitlines()), "")
