"""Operating points on simulated validation scans (moved to `defectwatch.service.operating_points`,
which ``make default-model`` uses to choose the shipped threshold and report rule).

    python -m benchmarks.operating_points [--model DIR] [--out FILE.json] [--quick]
"""

from defectwatch.service.operating_points import main

if __name__ == "__main__":
    main()
