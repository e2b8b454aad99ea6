"""The stages of one message (DESIGN.md "Data flow of one message"), behind core.engine.Core.

intake: dedupe + store (before anything else) -> queue per conversation, in order.
process: claim -> media -> remember -> decide (answering: recall -> answer) -> delivery.
worker: leases, heartbeat, adoption of a dead worker's messages. upkeep: retention, migration,
deletions, the index catch-up. Each stage receives core.services.Services, never Core.
"""
