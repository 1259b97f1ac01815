"""``ragfleet flywheel``: rated answers from the feedback store into one BEIR-style folder that
``ragfleet eval answers``, ``ragfleet train embedder`` and ``ragfleet train router`` read; and
the store's retention and per-tenant deletion."""
