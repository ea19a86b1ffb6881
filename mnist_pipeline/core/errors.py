"""The one exception family the command line reports as a one-line error (exit status 2)."""


class UserError(Exception):
    """Bad input from the user: a parameter, a data file, a run id or a model URI."""


class RegistrationError(UserError):
    """Training finished and is kept, but registering its best run failed."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, for a one-line report; '' if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
