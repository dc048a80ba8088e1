"""tracelake: Spark batch data and training pipeline for supply-chain scan events."""

__version__ = "0.1.0"
