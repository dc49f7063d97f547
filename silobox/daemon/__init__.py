"""``silod``'s composition root: options, start-up order, and the wiring of the services.

It stands above both ``silobox.api`` and ``silobox.engine``: it builds the engine's services,
hands them to the API as its backend and serves it. Nothing else imports this package.
"""
