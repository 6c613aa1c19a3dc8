"""The one exception type a user sees: the CLI prints its message on one line and exits with code 2."""


class CnnlabError(ValueError):
    """An error in the user's input (a spec, a path, a dataset, an option), with a message saying what to do."""
