"""Proposers: the drafter protocol, the recurrent drafter (ReDrafter's RNN head) with its beam and
best-nodes tree search, and retrieval drafts (docs/design.md §6).
"""
