"""`python -m defectwatch` runs the command line."""

from defectwatch.service.cli import main

main()
