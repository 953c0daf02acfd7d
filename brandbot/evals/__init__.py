"""`brandbot prompts eval`: voice regression tests run through the real queue and workers."""
