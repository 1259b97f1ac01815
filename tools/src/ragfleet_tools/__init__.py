"""The tools on top of the services: the ``ragfleet`` CLI (``cli``), retrieval evaluation
(``eval``) and model training (``training``). They depend on the base library ``ragfleet`` and
on the service packages; nothing imports them."""
