"""actprm: active-learning process reward models at corpus scale."""

__version__ = "0.1.0"
