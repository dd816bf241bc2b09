"""The Sacred pre-flight shared by ``training.py`` and ``validation.py``: the command line
(``command_line``: one ``error:`` line and exit 2 for a mistake, before Sacred creates a run), the
config and data checks (``config_check``) and what a run records about itself (``run_record``)."""
