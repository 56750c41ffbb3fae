"""Fleet controller tests."""
