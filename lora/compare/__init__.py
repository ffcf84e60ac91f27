"""Compare LoRA backends: correctness against the torch reference, timing, and a report."""
