"""Test helpers shared by the tests and benchmarks/ (import as ``helpers.<module>``)."""
