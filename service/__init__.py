"""The HTTP face of the model: a BentoML service (``service.service:Scorebox``)."""
