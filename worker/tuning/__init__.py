"""`brandbot tune`: a LoRA adapter trained on the company's own answers, checked before and after."""
