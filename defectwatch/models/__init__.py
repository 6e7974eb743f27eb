"""Model versions shipped inside the package (see defectwatch.service.default_model)."""
