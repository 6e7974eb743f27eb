"""defectwatch: find, count and record point defects in STM scans of 2D semiconductors."""

__version__ = "0.1.0"
