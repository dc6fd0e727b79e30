"""Fine-tuning framework for FastANKH."""
