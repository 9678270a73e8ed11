"Test-only helpers of BitGen (not part of the package)"
