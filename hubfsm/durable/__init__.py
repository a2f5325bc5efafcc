"""Durability: the per-model outbox, the trainer's journal, recovery and file snapshots."""
