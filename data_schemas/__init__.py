"""The canonical table schemas of actprm, one YAML file per table.

These files are the single source of truth: `actprm.schemas` builds Arrow schemas
from them, every Parquet file the project writes is cast to them, and the README
links them. This folder is installed as a package so an installed `actprm` finds
the same files as a clone.
"""
